#!/usr/bin/env python3
"""The client of scripts/callgrind-callbacks.sh: PORT PID N.

Sends 100 `/healthz` and 100 signed callbacks as a warm-up, then N `/healthz` and N signed
SCAN callbacks for random scenes nobody waits on, one at a time over one keep-alive
connection, and has callgrind (`callgrind_control`, on PID) zero its counters before the first
phase and dump them after each. Callbacks are signed with MP_TOKEN as wxlogin-bench signs
them: a nonce and an openid of their own each, so none is a retry or a replay of another.
"""
import base64
import hashlib
import http.client
import os
import subprocess
import sys
import time

port, pid, n = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
MP_TOKEN = os.environ["MP_TOKEN"]
GH_ID = "gh_sandbox000001"  # the fake WeChat's account
tag = os.urandom(4).hex()
seq = 0
conn = http.client.HTTPConnection("127.0.0.1", port)


def ctl(*args):
    subprocess.run(["callgrind_control", *args, pid], check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)


def send(method, path, body=None):
    conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
    conn.putheader("Host", f"127.0.0.1:{port}")
    if body is None:
        conn.putheader("Accept", "*/*")
        conn.endheaders()
    else:
        conn.putheader("Content-Type", "text/xml")
        conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
    response = conn.getresponse()
    return response.status, response.read()


def healthz():
    status, _ = send("GET", "/healthz")
    if status != 200:
        sys.exit(f"/healthz answered {status}")


def callback():
    global seq
    seq += 1
    openid = f"o{tag}{seq:019d}"
    nonce = f"{tag}{seq}"
    now = int(time.time())
    signature = hashlib.sha1("".join(sorted([MP_TOKEN, str(now), nonce])).encode()).hexdigest()
    scene = "wxl_" + base64.urlsafe_b64encode(os.urandom(16)).rstrip(b"=").decode()
    xml = (
        f"<xml><ToUserName><![CDATA[{GH_ID}]]></ToUserName>\n"
        f"<FromUserName><![CDATA[{openid}]]></FromUserName>\n"
        f"<CreateTime>{now}</CreateTime>\n"
        f"<MsgType><![CDATA[event]]></MsgType>\n"
        f"<Event><![CDATA[SCAN]]></Event>\n"
        f"<EventKey><![CDATA[{scene}]]></EventKey>\n"
        f"<Ticket><![CDATA[bench-ticket]]></Ticket>\n"
        f"</xml>"
    ).encode()
    query = f"signature={signature}&timestamp={now}&nonce={nonce}&openid={openid}"
    status, body = send("POST", f"/wechat_event?{query}", xml)
    if status != 200 or body != b"success":
        sys.exit(f"callback answered {status} {body!r}")


for _ in range(100):
    healthz()
    callback()
ctl("-z")
for _ in range(n):
    healthz()
ctl("-d", "healthz")
for _ in range(n):
    callback()
ctl("-d", "callbacks")
