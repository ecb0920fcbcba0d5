#!/usr/bin/env python3
"""The parts of ServiceNow's Table API and NetBox's REST API that Wavelift uses, and a
generic endpoint, for the CMDB tests (tests/e2e/cmdb.rs). Request and response shapes
follow the vendors' API references: ServiceNow's {"result": ...} bodies, its
{"error": {"message", "detail"}, "status": "failure"} errors and Link headers for pages;
NetBox's {"count", "next", "previous", "results"} pages, {"detail": ...} errors and
field errors, its token authentication.

Usage: cmdb_api.py  (prints "listening PORT" on its first line; serves 127.0.0.1 only)
Control: POST /_reset with the state as JSON, GET /_state for the state and the request
log, POST /_remove {"table", "sys_id"} to drop a ServiceNow record. Faults in the state: {"throttle": N} answers the next N requests 429 with
Retry-After: 1; {"fail": N} answers them 503. Pages hold at most "page_size" records
(default 1), so every lookup crosses pages."""

import base64
import json
import sys
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LOCK = threading.Lock()
STATE = {}
LOG = []


def reset(state):
    STATE.clear()
    STATE.update(
        {
            "servicenow": {"user": "wavelift", "password": "", "tables": {}},
            "netbox": {"token": "", "virtual-machines": [], "devices": [], "journal": []},
            "generic": {"token": ""},
            "faults": {"throttle": 0, "fail": 0},
            "page_size": 1,
        }
    )
    for key, value in state.items():
        if isinstance(value, dict) and isinstance(STATE.get(key), dict):
            STATE[key].update(value)
        else:
            STATE[key] = value


reset({})


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def answer(self, status, body=None, headers=None):
        data = b"" if body is None else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def body(self):
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        return raw.decode() if raw else ""

    def handle_any(self, method):
        url = urllib.parse.urlsplit(self.path)
        query = urllib.parse.parse_qs(url.query)
        text = self.body()
        with LOCK:
            if url.path == "/_reset" and method == "POST":
                reset(json.loads(text or "{}"))
                LOG.clear()
                return self.answer(200, {"ok": True})
            if url.path == "/_remove" and method == "POST":
                # {"table": T, "sys_id": S}: a ServiceNow record goes (a duplicate fixed).
                wanted = json.loads(text or "{}")
                table = STATE["servicenow"]["tables"].get(wanted.get("table"), [])
                table[:] = [ci for ci in table if ci["sys_id"] != wanted.get("sys_id")]
                return self.answer(200, {"ok": True})
            if url.path == "/_state":
                return self.answer(200, {"state": STATE, "log": LOG})
            LOG.append(
                {
                    "method": method,
                    "path": url.path,
                    "query": url.query,
                    "authorization": self.headers.get("Authorization", ""),
                    "content_type": self.headers.get("Content-Type", ""),
                    "body": text,
                }
            )
            faults = STATE["faults"]
            if faults.get("throttle", 0) > 0:
                faults["throttle"] -= 1
                LOG[-1]["fault"] = "429"
                return self.answer(
                    429,
                    {"error": {"message": "Rate limit exceeded", "detail": "Too many requests"}, "status": "failure"},
                    {"Retry-After": "1"},
                )
            if faults.get("fail", 0) > 0:
                faults["fail"] -= 1
                LOG[-1]["fault"] = "503"
                return self.answer(503, {"error": {"message": "Service Unavailable", "detail": ""}, "status": "failure"})
            if url.path.startswith("/api/now/table/"):
                return self.servicenow(method, url, query, text)
            if url.path.startswith("/api/"):
                return self.netbox(method, url, query, text)
            if url.path.startswith("/generic/"):
                token = STATE["generic"]["token"]
                if token and self.headers.get("Authorization") != f"Bearer {token}":
                    return self.answer(401, {"message": "unauthorized"})
                return self.answer(200, {"ok": True, "path": url.path})
            return self.answer(404, {"detail": "Not found."})

    # ---- ServiceNow

    def servicenow(self, method, url, query, text):
        sn = STATE["servicenow"]
        expected = "Basic " + base64.b64encode(f"{sn['user']}:{sn['password']}".encode()).decode()
        if self.headers.get("Authorization") != expected:
            return self.answer(
                401,
                {"error": {"message": "User Not Authenticated", "detail": "Required to provide Auth information"}, "status": "failure"},
            )
        parts = url.path.split("/")[4:]  # table[, sys_id]
        table = sn["tables"].setdefault(parts[0], [])
        fields = query.get("sysparm_fields", [""])[0].split(",")

        def shown(ci):
            return {k: v for k, v in ci.items() if not fields[0] or k in fields}

        if len(parts) == 1 and method == "GET":
            wanted = query.get("sysparm_query", [""])[0]
            matches = [ci for ci in table if not wanted or wanted == f"name={ci.get('name')}"]
            limit = min(int(query.get("sysparm_limit", ["10000"])[0]), STATE["page_size"])
            offset = int(query.get("sysparm_offset", ["0"])[0])
            page = matches[offset : offset + limit]

            def link(at):
                q = dict(query)
                q["sysparm_offset"] = [str(at)]
                q["sysparm_limit"] = [str(limit)]
                base = f"http://{self.headers['Host']}{url.path}"
                # As ServiceNow writes it: the commas of sysparm_fields left raw.
                return f"<{base}?{urllib.parse.urlencode(q, doseq=True, safe=',')}>"

            links = [f'{link(0)};rel="first"']
            if offset + limit < len(matches):
                links.append(f'{link(offset + limit)};rel="next"')
            headers = {"Link": ",".join(links), "X-Total-Count": str(len(matches))}
            return self.answer(200, {"result": [shown(ci) for ci in page]}, headers)
        found = [ci for ci in table if len(parts) > 1 and ci["sys_id"] == parts[1]]
        if not found:
            return self.answer(
                404,
                {"error": {"message": "No Record found", "detail": "Record doesn't exist or ACL restricts the record retrieval"}, "status": "failure"},
            )
        ci = found[0]
        if method == "GET":
            return self.answer(200, {"result": shown(ci)})
        if method in ("PATCH", "PUT"):
            # Like ServiceNow: a field the table does not have is skipped, and it is 200.
            changes = json.loads(text or "{}")
            ci.update({k: str(v) for k, v in changes.items() if k in ci})
            return self.answer(200, {"result": ci})
        return self.answer(405, {"error": {"message": "Method not allowed", "detail": ""}, "status": "failure"})

    # ---- NetBox

    def netbox(self, method, url, query, text):
        nb = STATE["netbox"]
        # NetBox 4.5: v2 tokens (nbt_KEY.TOKEN) as Bearer, v1 tokens as Token.
        scheme = "Bearer" if nb["token"].startswith("nbt_") else "Token"
        if self.headers.get("Authorization") != f"{scheme} {nb['token']}":
            return self.answer(403, {"detail": "Invalid v2 token" if scheme == "Bearer" else "Invalid token"})
        path = url.path
        if path.startswith("/api/virtualization/virtual-machines/"):
            kind, rest = "virtual-machines", path[len("/api/virtualization/virtual-machines/") :]
        elif path.startswith("/api/dcim/devices/"):
            kind, rest = "devices", path[len("/api/dcim/devices/") :]
        elif path.startswith("/api/extras/journal-entries/"):
            return self.journal(method, url, query, text)
        else:
            return self.answer(404, {"detail": "Not found."})
        objects = nb[kind]
        if rest == "" and method == "GET":
            matches = [o for o in objects if "name" not in query or o["name"] == query["name"][0]]
            return self.page(url, query, matches)
        ids = [o for o in objects if rest.strip("/") == str(o["id"])]
        if not ids:
            return self.answer(404, {"detail": "Not found."})
        obj = ids[0]
        if method == "GET":
            return self.answer(200, obj)
        if method == "PATCH":
            changes = json.loads(text or "{}")
            if "status" in changes:
                choices = ["offline", "active", "planned", "staged", "failed", "decommissioning"]
                if changes["status"] not in choices:
                    return self.answer(400, {"status": [f"\"{changes['status']}\" is not a valid choice."]})
                value = changes["status"]
                obj["status"] = {"value": value, "label": value.capitalize()}
            return self.answer(200, obj)
        return self.answer(405, {"detail": f'Method "{method}" not allowed.'})

    def journal(self, method, url, query, text):
        entries = STATE["netbox"]["journal"]
        if method == "GET":
            matches = [
                e
                for e in entries
                if e["assigned_object_type"] == query.get("assigned_object_type", [""])[0]
                and str(e["assigned_object_id"]) == query.get("assigned_object_id", [""])[0]
            ]
            return self.page(url, query, matches)
        if method == "POST":
            entry = json.loads(text or "{}")
            missing = [k for k in ("assigned_object_type", "assigned_object_id", "comments") if k not in entry]
            if missing:
                return self.answer(400, {k: ["This field is required."] for k in missing})
            entry["id"] = len(entries) + 1
            entries.append(entry)
            return self.answer(201, entry)
        return self.answer(405, {"detail": f'Method "{method}" not allowed.'})

    def page(self, url, query, matches):
        limit = min(int(query.get("limit", ["50"])[0]), STATE["page_size"])
        offset = int(query.get("offset", ["0"])[0])

        def at(position):
            q = dict(query)
            q["offset"] = [str(position)]
            q["limit"] = [str(limit)]
            return f"http://{self.headers['Host']}{url.path}?{urllib.parse.urlencode(q, doseq=True)}"

        return self.answer(
            200,
            {
                "count": len(matches),
                "next": at(offset + limit) if offset + limit < len(matches) else None,
                "previous": at(max(0, offset - limit)) if offset > 0 else None,
                "results": matches[offset : offset + limit],
            },
        )

    def do_GET(self):
        self.handle_any("GET")

    def do_POST(self):
        self.handle_any("POST")

    def do_PATCH(self):
        self.handle_any("PATCH")

    def do_PUT(self):
        self.handle_any("PUT")

    def do_DELETE(self):
        self.handle_any("DELETE")


def main():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    print(f"listening {server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    sys.exit(main())
