"""An SMTP server for Wavelift's tests (aiosmtpd): every message it accepts is written to
a folder as N.eml with N.json beside it (the envelope: MAIL FROM and RCPT TO).

    python3 smtp_sink.py --port PORT --folder DIR [--reject-all] [--reject ADDRESS]...
        [--defer ADDRESS]... [--reject-sender ADDRESS] [--max-recipients N]
        [--starttls | --implicit-tls] [--cert PEM --key PEM] [--auth USER:PASSWORD]

--reject-all answers every RCPT TO with 550 (a permanent refusal); --reject answers so
for that address only (a departed owner); --defer answers 451 (try again later) to the
first RCPT TO of that address only (greylisting); --reject-sender answers MAIL FROM of
that address with 553 (a sender the server does not take); --max-recipients answers
452 to each RCPT TO past the Nth of one message (RFC 5321's "too many recipients").
--starttls requires
STARTTLS before anything else; --implicit-tls speaks TLS from the first byte (smtps).
--auth requires AUTH (PLAIN or LOGIN) with that user and password, over TLS only. The
server prints "ready" once it listens, and runs until killed.
"""

import argparse
import json
import ssl
import os
import signal
import sys
import threading

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword


class Sink:
    def __init__(self, folder, reject_all, reject, defer, reject_sender, max_recipients):
        self.folder = folder
        self.max_recipients = max_recipients
        self.reject_sender = set(reject_sender)
        self.reject_all = reject_all
        self.reject = set(reject)
        self.defer = set(defer)
        self.count = 0
        self.lock = threading.Lock()

    async def handle_MAIL(self, server, session, envelope, address, mail_options):
        if address in self.reject_sender:
            return "553 5.7.1 sender address not allowed here"
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if self.reject_all:
            return "550 5.1.1 mailbox unavailable (the test server refuses everything)"
        if address in self.reject:
            return "550 5.1.1 no such user here"
        if address in self.defer:
            self.defer.discard(address)
            return "451 4.7.1 greylisted: try again later"
        if self.max_recipients and len(envelope.rcpt_tos) >= self.max_recipients:
            return "452 4.5.3 Too many recipients"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        with self.lock:
            self.count += 1
            n = self.count
        base = os.path.join(self.folder, str(n))
        with open(base + ".eml.partial", "wb") as f:
            f.write(envelope.original_content)
        with open(base + ".json", "w") as f:
            json.dump({"mail_from": envelope.mail_from, "rcpt_tos": envelope.rcpt_tos}, f)
        os.rename(base + ".eml.partial", base + ".eml")
        return "250 Message accepted"


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--folder", required=True)
    parser.add_argument("--reject-all", action="store_true")
    parser.add_argument("--reject", action="append", default=[])
    parser.add_argument("--defer", action="append", default=[])
    parser.add_argument("--reject-sender", action="append", default=[])
    parser.add_argument("--max-recipients", type=int, default=0)
    parser.add_argument("--starttls", action="store_true")
    parser.add_argument("--implicit-tls", action="store_true")
    parser.add_argument("--cert")
    parser.add_argument("--key")
    parser.add_argument("--auth")
    args = parser.parse_args()
    os.makedirs(args.folder, exist_ok=True)
    options = {}
    if args.starttls or args.implicit_tls:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(args.cert, args.key)
        if args.starttls:
            options.update(tls_context=context, require_starttls=True)
        else:
            options.update(ssl_context=context)
    if args.auth:
        user, password = args.auth.split(":", 1)

        def authenticator(server, session, envelope, mechanism, auth_data):
            ok = (
                isinstance(auth_data, LoginPassword)
                and auth_data.login.decode() == user
                and auth_data.password.decode() == password
            )
            return AuthResult(success=ok, handled=False)

        options.update(authenticator=authenticator, auth_required=True, auth_require_tls=True)
    controller = Controller(
        Sink(args.folder, args.reject_all, args.reject, args.defer, args.reject_sender, args.max_recipients), hostname="127.0.0.1", port=args.port, **options
    )
    controller.start()
    print("ready", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    controller.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
