"""The app's own CSS and script, kept in ui/static/ and read once per process."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import streamlit as st

STATIC = Path(__file__).resolve().parent / "static"


@cache
def _markup() -> str:
    css = (STATIC / "app.css").read_text(encoding="utf-8")
    script = (STATIC / "focusable_frames.js").read_text(encoding="utf-8")
    return f"<style>{css}</style><script>{script}</script>"


def inject() -> None:
    """Page-wide CSS and one constant script; no user text goes in."""
    st.html(_markup(), unsafe_allow_javascript=True)
