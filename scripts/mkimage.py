#!/usr/bin/env python3
"""Builds container image tarballs from the machine's busybox-static, with
no registry and no container engine: a docker-archive tar (what `ctr images
import` and RKE2's air-gap images folder take) with one layer holding
/bin/busybox and a link per applet.

    mkimage.py OUT.tar NAME:TAG [--pause] [--cmd ARG]...

--pause makes a pod sandbox ("pause") image: PID 1 sleeps until SIGTERM.
Without it the image's command is `sh` unless --cmd is given.
Exit 2 with a message naming what is missing (e.g. busybox-static).
"""
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import time

BUSYBOX = os.environ.get("RKE2_BUSYBOX", "/bin/busybox")
PAUSE = ["/bin/sh", "-c", "trap 'exit 0' TERM INT; while :; do sleep 3600 & wait $!; done"]


def die(msg):
    print(f"mkimage: {msg}", file=sys.stderr)
    sys.exit(2)


def applets():
    try:
        out = subprocess.run([BUSYBOX, "--list"], check=True, capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        die(f"{BUSYBOX} does not run ({e}); install Debian's busybox-static")
    return sorted({a for a in out.split() if a and "/" not in a and a != "busybox"})


def layer_bytes():
    with open(BUSYBOX, "rb") as f:
        data = f.read()
    buf = io.BytesIO()
    mtime = 0
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as t:
        def add_dir(name, mode=0o755):
            ti = tarfile.TarInfo(name)
            ti.type, ti.mode, ti.mtime = tarfile.DIRTYPE, mode, mtime
            t.addfile(ti)

        def add_file(name, content, mode=0o644):
            ti = tarfile.TarInfo(name)
            ti.size, ti.mode, ti.mtime = len(content), mode, mtime
            t.addfile(ti, io.BytesIO(content))

        for d in ["bin", "dev", "etc", "proc", "sys", "root", "var", "var/run", "usr", "usr/bin", "sbin"]:
            add_dir(d)
        add_dir("tmp", 0o1777)
        add_file("bin/busybox", data, 0o755)
        for a in applets():
            if a in ("busybox",):
                continue
            ti = tarfile.TarInfo(f"bin/{a}")
            ti.type, ti.linkname, ti.mode, ti.mtime = tarfile.SYMTYPE, "busybox", 0o777, mtime
            t.addfile(ti)
        add_file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n")
        add_file("etc/group", b"root:x:0:\nnobody:x:65534:\n")
    return buf.getvalue()


def main(argv):
    if len(argv) < 3 or argv[1].startswith("-"):
        die("usage: mkimage.py OUT.tar NAME:TAG [--pause] [--cmd ARG]...")
    out, ref = argv[1], argv[2]
    pause = "--pause" in argv[3:]
    cmd = [argv[i + 1] for i in range(3, len(argv) - 1) if argv[i] == "--cmd"]
    if not os.path.exists(BUSYBOX):
        die(f"{BUSYBOX} not found; install Debian's busybox-static")
    # A dynamically linked busybox names its ELF interpreter; it would not
    # run inside an image that has no libc.
    if b"/lib64/ld-linux" in open(BUSYBOX, "rb").read(4096):
        die(f"{BUSYBOX} is dynamically linked; install Debian's busybox-static")
    if "/" not in ref.split(":")[0] and "." not in ref.split("/")[0]:
        ref = "docker.io/library/" + ref
    layer = layer_bytes()
    diff_id = "sha256:" + hashlib.sha256(layer).hexdigest()
    arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(os.uname().machine, os.uname().machine)
    config = {
        "architecture": arch,
        "os": "linux",
        "created": "1970-01-01T00:00:00Z",
        "config": {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Cmd": PAUSE if pause else (cmd or ["sh"]),
            "WorkingDir": "/",
        },
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created": "1970-01-01T00:00:00Z", "created_by": "rke2 scripts/mkimage.py"}],
    }
    cfg = json.dumps(config, sort_keys=True).encode()
    cfg_name = hashlib.sha256(cfg).hexdigest() + ".json"
    layer_name = diff_id[7:] + "/layer.tar"
    manifest = json.dumps([{"Config": cfg_name, "RepoTags": [ref], "Layers": [layer_name]}]).encode()
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    tmp = out + ".tmp"
    with tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as t:
        for name, content in [(cfg_name, cfg), (layer_name, layer), ("manifest.json", manifest)]:
            ti = tarfile.TarInfo(name)
            ti.size, ti.mode, ti.mtime = len(content), 0o644, 0
            t.addfile(ti, io.BytesIO(content))
    os.replace(tmp, out)
    print(f"mkimage: wrote {out} ({ref}, {len(layer)} byte layer)")


if __name__ == "__main__":
    main(sys.argv)
