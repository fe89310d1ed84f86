"""User text in Streamlit messages, shown as typed and never as markdown.

st.warning, st.error, st.info, st.caption, st.toast and st.markdown read their text as
markdown: a model id or a link value like ``[Log in](https://evil.example)`` would become
a working link, ``![x](https://evil.example/x.png)`` an image fetched from another host,
``:red[...]`` attacker-styled text. Every message that can hold a user's string goes
through :func:`plain` (the whole message) or :func:`code` (one value).
"""

from __future__ import annotations

import re

# The ASCII punctuation markdown reads (CommonMark lets any be backslash-escaped): escaped,
# none starts a link, image, emphasis, directive (:red[...], :material/...:), autolink
# (https\://, www\., a@b\.c), list, heading, math ($), entity (&) or HTML. Quotes, commas and
# the like start nothing and stay as they are.
_MARKDOWN = re.compile(r"([\\`*_{}\[\]()#+\-.!|<>~:$&])")


def plain(text: object) -> str:
    """``text`` as markdown that renders exactly as the characters typed, on one line."""
    return _MARKDOWN.sub(r"\\\1", " ".join(str(text).split()))


def code(value: object) -> str:
    """One value as an inline code span, whatever backticks it holds (markdown reads nothing inside)."""
    text = str(value) or " "
    fence = "`" * (max((len(run) for run in re.findall("`+", text)), default=0) + 1)
    return f"{fence} {text} {fence}"
