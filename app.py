"""Logit-lens dashboard: ``streamlit run app.py``."""

import streamlit as st

from ui import page, sidebar

st.set_page_config(page_title="Logit lens", page_icon=":material/grid_on:", layout="wide")

pages = st.navigation(
    [
        st.Page("pages/lens_view.py", title="Lens", icon=":material/grid_on:", default=True),
        st.Page("pages/trajectories.py", title="Trajectories", icon=":material/show_chart:", url_path="trajectories"),
        st.Page("pages/compare.py", title="Compare", icon=":material/compare:", url_path="compare"),
        st.Page("pages/dataset.py", title="Dataset", icon=":material/dataset:", url_path="dataset"),
        st.Page("pages/tuned_lens.py", title="Tuned lens", icon=":material/tune:", url_path="tuned_lens"),
    ]
)
page.style()
st.session_state["settings"] = sidebar.render()
page.warn_about_settings()
pages.run()
