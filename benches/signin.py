"""Signs in at a portcullis demo as a browser would (start, the demo issuer's form, the callback)
and prints the Cookie header that carries the session. Used by benches/callgrind.sh and
benches/load.sh.   usage: python3 benches/signin.py PORT [USER]"""
import http.client
import sys
import urllib.parse


def sign_in(port, user="alice"):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    jar = {}

    def take(r):
        for k, v in r.getheaders():
            if k.lower() == "set-cookie":
                name, _, rest = v.partition("=")
                jar[name] = rest.split(";")[0]

    def cookie():
        return "; ".join(f"{k}={v}" for k, v in jar.items())

    nav = {"Accept": "text/html", "Sec-Fetch-Mode": "navigate", "Host": f"127.0.0.1:{port}"}
    c.request("GET", "/oauth2/start?rd=%2F", headers=nav)
    r = c.getresponse(); r.read(); take(r)
    authorize = urllib.parse.urlsplit(r.getheader("Location"))
    form = urllib.parse.parse_qsl(authorize.query) + [("user", user)]
    i = http.client.HTTPConnection(authorize.hostname, authorize.port, timeout=60)
    i.request("POST", "/authorize", body=urllib.parse.urlencode(form),
              headers={"Content-Type": "application/x-www-form-urlencoded"})
    r = i.getresponse(); r.read()
    back = urllib.parse.urlsplit(r.getheader("Location"))
    c.request("GET", back.path + "?" + back.query, headers=dict(nav, Cookie=cookie()))
    r = c.getresponse(); r.read(); take(r)
    assert r.status == 302 and any(k.startswith("_portcullis") for k in jar), (r.status, jar)
    return cookie()


if __name__ == "__main__":
    print(sign_in(int(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else "alice"))
