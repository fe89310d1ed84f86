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
# (<https://...>), list, heading, math ($), entity (&) or HTML. Quotes, commas and the like
# start nothing and stay as they are.
_MARKDOWN = re.compile(r"([\\`*_{}\[\]()#+\-.!|<>~:$&])")


# GFM links bare URLs and emails by a search over the text after escapes are undone, so
# escaping can't stop it: an invisible word joiner after "http", "www" and "@" does.
_AUTOLINK = re.compile(r"(?i)https?(?=:)|www(?=\.)|@")
WORD_JOINER = "\u2060"


def plain(text: object) -> str:
    """``text`` as markdown that renders as the characters typed (one line, no link, no markup)."""
    text = _AUTOLINK.sub(lambda match: match.group() + WORD_JOINER, " ".join(str(text).split()))
    return _MARKDOWN.sub(r"\\\1", text)


def code(value: object) -> str:
    """One value as an inline code span, whatever backticks it holds (markdown reads nothing inside)."""
    text = str(value) or " "
    fence = "`" * (max((len(run) for run in re.findall("`+", text)), default=0) + 1)
    return f"{fence} {text} {fence}"
