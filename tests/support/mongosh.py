"""Running ``mongo/indexes.js`` the way mongosh would, without mongosh: in V8 (mini-racer),
with a ``db`` that records each ``createIndex`` call instead of sending it."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from tests.support.servers import ROOT

SCRIPT = ROOT / "mongo" / "indexes.js"

# mongosh's globals that indexes.js uses: db.getCollection(name).createIndex(keys, options)
# and printjson.
_SHELL = """
var created = [];
var db = {
  getCollection: function (name) {
    return {
      createIndex: function (keys, options) {
        created.push({ collection: name, keys: keys, options: options });
        return options.name;
      },
      getIndexes: function () { return created; },
    };
  },
};
function printjson() {}
"""


@dataclass(frozen=True)
class CreatedIndex:
    collection: str
    keys: list[tuple[str, int]]  # in the script's key order, which is the index's
    options: dict[str, Any]


def indexes_js_creates(**variables: Any) -> list[CreatedIndex]:
    """The indexes ``mongo/indexes.js`` creates, run with ``variables`` set first as
    ``mongosh --eval 'var name = value'`` would."""
    from py_mini_racer import MiniRacer

    preamble = "".join(f"var {name} = {json.dumps(value)};\n" for name, value in variables.items())
    with MiniRacer() as js:
        js.eval(_SHELL + preamble + SCRIPT.read_text())
        recorded = js.eval("JSON.stringify(created)")
    assert isinstance(recorded, str), recorded
    calls = json.loads(recorded)
    # JSON keeps an object's key order, so the index's key order survives the trip.
    return [CreatedIndex(c["collection"], list(c["keys"].items()), c["options"]) for c in calls]
