"""Links that name options by id or by label.

Streamlit's bind="query-params" stores a choice's display label in the URL and silently
drops anything else, so a hand-written ``?model=demo`` or ``?metric=target_prob`` would be
lost. Before such a widget is drawn, an id in the link is put into session state (which
Streamlit then uses), and a value that matches nothing becomes a visible warning.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import streamlit as st

from ui.escape import plain


def accept_choice(key: str, options: Sequence, label: Callable[[object], str]) -> bool:
    """Seed widget ``key`` from the link if the link names an option by id; False if it names none.

    Only the first time the key is seen in a session: afterwards the widget's own state wins.
    """
    value = st.query_params.get(key)
    if value is None or key in st.session_state or any(label(o) == value for o in options):
        return True
    match = next((o for o in options if str(o) == value), None)
    if match is None:
        return False
    st.session_state[key] = match
    return True


def warn(message: str) -> None:
    """One visible line about a link value the app can't use (called outside the sidebar)."""
    st.warning(plain(message), icon=":material/link_off:")


def choice(key: str, options: Sequence, label: Callable[[object], str], what: str) -> None:
    """accept_choice, warning when the link's value is not one of the options."""
    if not accept_choice(key, options, label):
        value = st.query_params.get(key)
        shown = ", ".join(str(o) for o in options if o is not None)
        warn(f"The link's {what} '{value}' isn't one of the choices here ({shown}); showing the default instead.")
