"""'Reproduce in Python' on every page, and the provenance every JSON export carries (lens.provenance)."""

from __future__ import annotations

import json

import streamlit as st

from lens import provenance
from lens.provenance import View


def offer(view: View) -> None:
    """The snippet that recomputes the page's data, in a closed expander (shown as code, never as markdown)."""
    with st.expander("Reproduce in Python", icon=":material/code:"):
        st.caption(
            "With the `lens` package installed, this recomputes the data on screen and writes the file the "
            "CSV button gives."
        )
        st.code(provenance.snippet(view), language="python")


def with_provenance(json_text: str, view: View) -> str:
    """A JSON export with what made it: library versions, models, token ids, lens and settings."""
    payload = json.loads(json_text)
    payload["provenance"] = provenance.provenance(view)
    return json.dumps(payload, ensure_ascii=False)
