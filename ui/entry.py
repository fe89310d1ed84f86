"""The first line of every page: light (Streamlit only), so it runs before torch is imported."""

from __future__ import annotations

import runpy
from pathlib import Path

import streamlit as st

APP = Path(__file__).resolve().parent.parent / "app.py"


def run_through_app() -> None:
    """Make sure app.py, with its navigation and sidebar, drives this run.

    When the very first request a server sees opens a sub-page URL, Streamlit runs that
    page file on its own (its legacy pages/ folder mode) until app.py has called
    st.navigation once. Then run app.py, which draws the page links and a "starting" line
    before its heavy imports and then this same page, and stop here. Pages call this
    before importing lens (torch takes seconds), so that first paint comes at once.
    """
    from streamlit.runtime.pages_manager import PagesManager

    if PagesManager.uses_pages_directory:
        runpy.run_path(str(APP), run_name="__main__")
        st.stop()
