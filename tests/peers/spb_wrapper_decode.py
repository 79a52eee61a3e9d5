#!/usr/bin/env python3
"""Decode Sparkplug B payload files with mqtt-spb-wrapper (PyPI); print one JSON object per file.

Usage: spb_wrapper_decode.py FILE...   (files in the order the messages were received)

Each object: {"timestamp", "seq", "metrics": [{"name", "alias", "datatype", "value",
"timestamp", "is_historical", "is_null", "quality"}]}. Numbers are printed as JSON numbers
(64-bit integers exactly). NDATA/DDATA metrics carry an alias and no datatype, as Sparkplug 3.0
wants; like a host application, this script takes their datatype from the births read earlier in
the same run and decodes the value with the library's own decoder.
"""

import json
import sys

from mqtt_spb_wrapper.spb_base import SpbPayloadParser


def as_int(v):
    return None if v is None else int(v)


def main(paths):
    datatypes = {}  # alias -> datatype, from NBIRTH/DBIRTH
    for path in paths:
        with open(path, "rb") as f:
            raw = f.read()
        parser = SpbPayloadParser(raw)
        payload = parser.as_dict()
        if not isinstance(payload, dict):
            raise SystemExit(f"{path}: not a Sparkplug payload")
        out = {
            "timestamp": as_int(payload.get("timestamp")),
            "seq": as_int(payload.get("seq")),
            "metrics": [],
        }
        for m in payload.get("metrics", []):
            alias = as_int(m.get("alias"))
            datatype = m.get("datatype")
            if datatype is not None and alias is not None:
                datatypes[alias] = datatype
            value = m.get("value")
            if datatype is None and alias in datatypes:
                datatype = datatypes[alias]
                field = next((k for k in m if k.endswith("Value")), None)
                if field is not None:
                    value = parser._decode_value(datatype, m[field])
            quality = m.get("properties", {}).get("key_value", {}).get("Quality")
            out["metrics"].append(
                {
                    "name": m.get("name"),
                    "alias": alias,
                    "datatype": datatype,
                    "value": value,
                    "timestamp": as_int(m.get("timestamp")),
                    "is_historical": bool(m.get("isHistorical", False)),
                    "is_null": bool(m.get("isNull", False)),
                    "quality": quality,
                }
            )
        print(json.dumps(out, default=str))


if __name__ == "__main__":
    main(sys.argv[1:])
