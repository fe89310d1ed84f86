"""Streamlit glue shared by the pages: settings, caching, sidebar, exports. The math lives in lens/."""
