"""Logit-lens dashboard: ``streamlit run app.py``."""

import streamlit as st

st.set_page_config(page_title="Logit lens", page_icon=":material/grid_on:", layout="wide")

PAGES = [
    st.Page("pages/lens_view.py", title="Lens", icon=":material/grid_on:", default=True),
    st.Page("pages/trajectories.py", title="Trajectories", icon=":material/show_chart:", url_path="trajectories"),
    st.Page("pages/attribution.py", title="Attribution", icon=":material/account_tree:", url_path="attribution"),
    st.Page("pages/compare.py", title="Compare", icon=":material/compare:", url_path="compare"),
    st.Page("pages/patch.py", title="Patch", icon=":material/healing:", url_path="patch"),
    st.Page("pages/dataset.py", title="Dataset", icon=":material/dataset:", url_path="dataset"),
    st.Page("pages/prompt_set.py", title="Prompt sets", icon=":material/stacked_line_chart:", url_path="prompt_set"),
    st.Page("pages/lenses.py", title="Lenses", icon=":material/tune:", url_path="lenses"),
]
# The page list is drawn here as links: .streamlit/config.toml turns off Streamlit's own
# list, which its legacy pages/ folder mode would show (file names) before this line runs.
pages = st.navigation(PAGES, position="hidden")
with st.sidebar.container(key="nav"):
    for target in PAGES:
        st.page_link(target)
# The first visit to a fresh server imports torch and TransformerLens (several seconds):
# say so at once, with the navigation already drawn, instead of a blank page.
starting = st.empty()
starting.info("Starting the lens engine…", icon=":material/hourglass_top:")
from ui import config, escape, sidebar, state, style  # noqa: E402 - imported after the first paint, see above

starting.empty()
style.inject()
server = config.read()  # the environment, once per run: every page and cache uses this reading
st.session_state[state.CHOICES] = sidebar.render(server)
if state.choices().model_name == "demo" and (note := st.session_state.get(sidebar.MODEL_NOTE)):
    st.info(escape.plain(note), icon=":material/cloud_off:")
if state.choices().chat_template:
    st.info(
        "Chat template on: the model reads your prompt as a user message in its chat format (the tokens under "
        "the prompt box show exactly what it reads).",
        icon=":material/chat:",
    )
config.warn_about_settings()
pages.run()
