#!/usr/bin/env python3
"""Send mail through bccguard with Python's smtplib (and one raw pipelined dialogue).

usage: smtplib_client.py PORT CAFILE USER PASSWORD
Exits non-zero, with a message, on any unexpected reply.
"""

import smtplib
import socket
import ssl
import sys

port, cafile, user, password = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]


def message(subject):
    return (
        f"From: app@example.com\r\nTo: customer@client.test\r\nSubject: {subject}\r\n"
        "\r\nHello from smtplib.\r\n"
    )


# Plain, from a relay network.
with smtplib.SMTP("127.0.0.1", port) as s:
    refused = s.sendmail("app@example.com", ["py-plain@client.test"], message("smtplib plain"))
    assert refused == {}, refused

# STARTTLS, then AUTH, from an address outside the relay networks.
context = ssl.create_default_context(cafile=cafile)
with smtplib.SMTP("localhost", port, source_address=("127.0.0.2", 0)) as s:
    s.ehlo()
    assert not s.has_extn("auth"), "AUTH must not be offered before TLS"
    s.starttls(context=context)
    s.ehlo()
    assert s.has_extn("auth"), "AUTH is offered after TLS"
    try:
        s.login(user, password + "-wrong")
        sys.exit("a wrong password was accepted")
    except smtplib.SMTPAuthenticationError as e:
        assert e.smtp_code == 535, e
    s.login(user, password)
    s.sendmail("app@example.com", ["py-tls@client.test"], message("smtplib starttls auth"))

# Outside the relay networks without AUTH: relaying is denied.
with smtplib.SMTP("127.0.0.1", port, source_address=("127.0.0.2", 0)) as s:
    try:
        s.sendmail("app@example.com", ["denied@client.test"], message("denied"))
        sys.exit("relaying was allowed without AUTH")
    except smtplib.SMTPRecipientsRefused as e:
        code, text = e.recipients["denied@client.test"]
        assert code == 550 and text.startswith(b"5.7.1"), e.recipients

# Pipelined: every command of the transaction in one write.
with socket.create_connection(("127.0.0.1", port)) as sock:
    f = sock.makefile("rb")

    def reply():
        lines = []
        while True:
            line = f.readline().decode()
            lines.append(line.rstrip("\r\n"))
            if line[3:4] != "-":
                return lines

    assert reply()[0].startswith("220 ")
    sock.sendall(b"EHLO py\r\n")
    assert "250-PIPELINING" in reply()
    sock.sendall(
        b"MAIL FROM:<app@example.com>\r\nRCPT TO:<py-piped@client.test>\r\nDATA\r\n"
    )
    got = [reply()[0] for _ in range(3)]
    assert got[0].startswith("250 2.1.0") and got[1].startswith("250 2.1.5"), got
    assert got[2].startswith("354"), got
    sock.sendall(message("smtplib pipelined").encode() + b".\r\nQUIT\r\n")
    assert reply()[0].startswith("250 2.0.0 Ok: queued as "), "data accepted"
    assert reply()[0] == "221 2.0.0 Bye"

print("smtplib: all checks passed")
