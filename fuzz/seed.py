#!/usr/bin/env python3
"""Seeds fuzz/corpus/<target>/ from the captured fixtures in tests/fixtures/."""
import json
import pathlib
import re

root = pathlib.Path(__file__).resolve().parent
fixtures = root.parent / "tests" / "fixtures"
corpus = root / "corpus"


def put(target, name, data):
    folder = corpus / target
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(data if isinstance(data, bytes) else data.encode())


for path in sorted(fixtures.rglob("*.bin")):
    put("datagram", path.name, path.read_bytes())
for path in sorted(fixtures.rglob("*.dlist")):
    put("dlist", path.name, path.read_bytes())
for path in sorted(fixtures.rglob("*.json")):
    if path.name == "index.json":
        continue
    try:
        text = json.loads(path.read_text()).get("message", "")
        event = json.loads(text)
    except (ValueError, AttributeError):
        continue
    put("event_json", path.name, text)
    if not isinstance(event, dict):
        continue
    if isinstance(event.get("uri"), str):
        put("imapurl", path.stem, event["uri"])
    envelope = event.get("vnd.cmu.envelope")
    if isinstance(envelope, str):
        put("envelope", path.stem, envelope)
        for n, word in enumerate(re.findall(r"=\?[^?]+\?[BbQq]\?[^?]*\?=", envelope)):
            put("rfc2047", f"{path.stem}-{n}", word)
# Encoded words of the shapes mail clients write, for the decoder to start from.
for n, word in enumerate([
    "=?UTF-8?Q?Gr=C3=BC=C3=9Fe?=",
    "=?utf-8?B?R3LDvMOfZQ==?= =?utf-8?b?IGF1cyBCZXJsaW4=?=",
    "=?ISO-8859-1?Q?Andr=E9?= Pirard",
    "=?iso-2022-jp?B?GyRCJUYlOSVIGyhC?=",
    "plain =?US-ASCII*EN?Q?Keith_Moore?= text",
    "=?windows-1252?Q?caf=E9?=\r\n =?windows-1252?Q?_cr=E8me?=",
]):
    put("rfc2047", f"handmade-{n}", word)
print("seeded", {p.name: len(list(p.iterdir())) for p in sorted(corpus.iterdir())})
