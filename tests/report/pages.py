"""Reading a report page without a browser: its visible text, images and links (stdlib HTML parser)."""

from __future__ import annotations

from dataclasses import dataclass, field
from html.parser import HTMLParser


@dataclass
class Page:
    text: str = ""
    images: list[dict[str, str]] = field(default_factory=list)  # attributes of every <img>
    links: list[str] = field(default_factory=list)  # href of every <a>, <link>; src of every <script>
    ids: set[str] = field(default_factory=set)


class _Collector(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.page = Page()
        self._chunks: list[str] = []
        self._skip = 0  # inside <script> or <style>

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {name: value or "" for name, value in attrs}
        if "id" in values:
            self.page.ids.add(values["id"])
        if tag == "img":
            self.page.images.append(values)
        elif tag in ("a", "link") and "href" in values:
            self.page.links.append(values["href"])
        elif tag == "script" and "src" in values:
            self.page.links.append(values["src"])
        if tag in ("script", "style"):
            self._skip += 1

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style"):
            self._skip -= 1

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self._chunks.append(data)


def parse_page(html: str) -> Page:
    """The page's text (whitespace collapsed), images, links and element ids."""
    collector = _Collector()
    collector.feed(html)
    collector.close()
    collector.page.text = " ".join(" ".join(collector._chunks).split())
    return collector.page


def squash(text: str) -> str:
    """Whitespace collapsed, for comparing table text with page text."""
    return " ".join(str(text).split())
