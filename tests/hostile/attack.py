"""A hostile tenant, run inside a lab namespace with Debian's scapy
(/usr/bin/python3). Every frame it sends carries MARKER, so victims can count
what reached them, whatever the headers say.

  attack.py listen SECS              count MARKER frames on eth0 for SECS s
  attack.py vxlan PORT VNIS DSTS INNER_SRCS INNER_DSTS
                                     UDP to DSTS:PORT carrying VXLAN frames
                                     (inner destination MAC: the VTEP MAC the
                                     fabric derives from DST, 0e:6e:a:b:c:d)
  attack.py l2 IFACE DSTMAC PAIRS    Ethernet frames with raw IPv4 (src>dst,...)
  attack.py spoof PAIRS              raw IPv4 with forged sources (src>dst,...)
  attack.py tcp HOST PORT TLS        try to connect (and handshake); prints
                                     "connected" or "refused: why"
  attack.py ipv6 DSTMAC TARGETS PORTS
                                     IPv6 from the link-local source of eth0
                                     to DSTMAC: echo requests and TCP SYNs to
                                     each target and port; counts IPv6 frames
                                     that come back ("sent N replies M")
  attack.py serve6 SECS PORT         accept TCP on [::]:PORT (IPv6 only)
  attack.py flood HOST PORT PATH THREADS SECS
                                     THREADS clients looping GET PATH for
                                     SECS s ("requests N errors M")
Lists are comma separated. Prints one result line.
"""
import logging
import socket
import ssl
import sys
import time

logging.getLogger("scapy.runtime").setLevel(logging.ERROR)

MARKER = b"NETFAB-HOSTILE-PROBE"


def listen(secs):
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
    s.bind(("eth0", 0))
    s.settimeout(0.2)
    print("ready", flush=True)
    seen = 0
    end = time.time() + secs
    while time.time() < end:
        try:
            frame = s.recv(65535)
        except socket.timeout:
            continue
        if MARKER in frame:
            seen += 1
    print(f"seen {seen}", flush=True)


def vxlan(port, vnis, dsts, inner_srcs, inner_dsts):
    from scapy.all import ICMP, IP, Ether, Raw
    from scapy.layers.vxlan import VXLAN

    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sent = 0
    for dst in dsts:
        for vni in vnis:
            for isrc in inner_srcs:
                for idst in inner_dsts:
                    vtep = "0e:6e:" + ":".join(f"{int(o):02x}" for o in dst.split("."))
                    frame = (
                        VXLAN(vni=vni, flags=0x08)
                        / Ether(src="02:00:00:00:00:01", dst=vtep)
                        / IP(src=isrc, dst=idst)
                        / ICMP()
                        / Raw(MARKER)
                    )
                    try:
                        s.sendto(bytes(frame), (dst, port))
                        sent += 1
                    except OSError:
                        pass
    print(f"sent {sent}", flush=True)


def spoof(pairs):
    from scapy.all import ICMP, IP, Raw, conf, send

    conf.verb = 0
    for p in pairs:
        src, dst = p.split(">")
        send(IP(src=src, dst=dst) / ICMP() / Raw(MARKER), count=3)
    print(f"sent {3 * len(pairs)}", flush=True)


def l2(iface, dstmac, pairs):
    from scapy.all import ICMP, IP, Ether, Raw, conf, sendp

    conf.verb = 0
    for p in pairs:
        src, dst = p.split(">")
        sendp(Ether(dst=dstmac) / IP(src=src, dst=dst) / ICMP() / Raw(MARKER),
              iface=iface, count=3)
    print(f"sent {3 * len(pairs)}", flush=True)


def tcp(host, port, use_tls):
    try:
        raw = socket.create_connection((host, port), timeout=2)
    except OSError as e:
        print(f"refused: {e}", flush=True)
        return
    if use_tls:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        try:
            ctx.wrap_socket(raw).close()
        except OSError as e:
            print(f"refused: handshake {e}", flush=True)
            return
    else:
        raw.sendall(b"GET /version HTTP/1.0\r\n\r\n")
    print("connected", flush=True)


def ipv6(dstmac, targets, ports):
    """Raw IPv6 straight to the gateway's MAC (no neighbour discovery to
    wait for): what a container's kernel would send to the host's link-local
    or global addresses, and any service listening on `::`."""
    from scapy.all import IPv6, TCP, Ether, ICMPv6EchoRequest, Raw, sendp
    from scapy.utils6 import in6_mactoifaceid

    mac = open("/sys/class/net/eth0/address").read().strip()
    src = "fe80::" + in6_mactoifaceid(mac).lower()
    rx = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x86DD))
    rx.bind(("eth0", 0))
    rx.settimeout(0.2)
    own = bytes.fromhex(mac.replace(":", ""))
    frames = []
    for t in targets:
        base = Ether(src=mac, dst=dstmac) / IPv6(src=src, dst=t)
        frames.append(base / ICMPv6EchoRequest(data=MARKER))
        for port in ports:
            frames.append(base / TCP(sport=40000 + port % 20000, dport=port, flags="S")
                          / Raw(MARKER))
    sendp(frames, iface="eth0", count=2, verbose=False)
    replies = 0
    end = time.time() + 2
    while time.time() < end:
        try:
            frame, addr = rx.recvfrom(65535)
        except socket.timeout:
            continue
        # Our own frames show up outgoing; count what came from elsewhere.
        if addr[2] != socket.PACKET_OUTGOING and frame[6:12] != own:
            replies += 1
    print(f"sent {2 * len(frames)} replies {replies}", flush=True)


def serve6(secs, port):
    s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("::", port))
    s.listen()
    s.setblocking(False)
    print("ready", flush=True)
    end = time.time() + secs
    while time.time() < end:
        try:
            s.accept()[0].close()
        except BlockingIOError:
            pass
        time.sleep(0.01)


def flood(host, port, path, threads, secs):
    import threading

    counts = {"ok": 0, "err": 0}
    lock = threading.Lock()
    end = time.time() + secs

    def client():
        while time.time() < end:
            try:
                with socket.create_connection((host, port), timeout=5) as s:
                    s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
                    while s.recv(65536):
                        pass
                key = "ok"
            except OSError:
                key = "err"
            with lock:
                counts[key] += 1

    ts = [threading.Thread(target=client) for _ in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    print(f"requests {counts['ok']} errors {counts['err']}", flush=True)


def serve(secs, ports):
    """Accepts TCP on every address at each port until secs pass: a service
    of the host itself (say, a co-located etcd)."""
    socks = []
    for port in ports:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("0.0.0.0", port))
        s.listen()
        s.setblocking(False)
        socks.append(s)
    print("ready", flush=True)
    end = time.time() + secs
    while time.time() < end:
        for s in socks:
            try:
                s.accept()[0].close()
            except BlockingIOError:
                pass
        time.sleep(0.01)


def main():
    cmd, args = sys.argv[1], sys.argv[2:]
    split = lambda a: [x for x in a.split(",") if x]
    if cmd == "listen":
        listen(float(args[0]))
    elif cmd == "vxlan":
        vxlan(int(args[0]), [int(v) for v in split(args[1])], split(args[2]),
              split(args[3]), split(args[4]))
    elif cmd == "l2":
        l2(args[0], args[1], split(args[2]))
    elif cmd == "spoof":
        spoof(split(args[0]))
    elif cmd == "serve":
        serve(float(args[0]), [int(p) for p in split(args[1])])
    elif cmd == "ipv6":
        ipv6(args[0], split(args[1]), [int(p) for p in split(args[2])])
    elif cmd == "serve6":
        serve6(float(args[0]), int(args[1]))
    elif cmd == "flood":
        flood(args[0], int(args[1]), args[2], int(args[3]), float(args[4]))
    elif cmd == "tcp":
        tcp(args[0], int(args[1]), args[2] == "tls")
    else:
        sys.exit(f"unknown command {cmd}")


if __name__ == "__main__":
    main()
