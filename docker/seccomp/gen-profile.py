#!/usr/bin/env python3
"""Writes docker/seccomp/io_uring.json: a Docker-default-style seccomp profile that also allows
io_uring (io_uring_setup, io_uring_enter, io_uring_register), which glommio needs and which
Docker's default profile blocks since Docker 25.

Two ways to build it:

  python3 docker/seccomp/gen-profile.py --base default.json
      Docker's own default profile (https://github.com/moby/profiles, seccomp/default.json, the
      one your engine ships), with the three io_uring syscalls added to its main allow rule and
      removed from any errno rule. This is the exact "default + io_uring" variant.

  python3 docker/seccomp/gen-profile.py            (how the committed file was made)
      Built from the kernel's syscall table (asm/unistd_64.h of linux-libc-dev) with Docker's
      policy: default action EPERM, everything allowed except the syscalls Docker's default
      profile blocks or reserves for privileged containers (list below, from Docker's "Seccomp
      security profiles" documentation), clone without namespace flags, clone3 answering ENOSYS
      (so libc falls back to clone), personality limited to the harmless personas.

Never use `seccomp=unconfined` instead: the stack only needs io_uring on top of the default.
"""
import argparse
import json
import os
import re
import sys

IO_URING = ["io_uring_setup", "io_uring_enter", "io_uring_register"]

# Blocked by Docker's default profile, or only allowed there with a capability a default
# container does not have (CAP_SYS_ADMIN, CAP_SYS_MODULE, CAP_SYS_PTRACE, CAP_SYS_TIME, ...).
BLOCKED = """
acct add_key bpf clock_adjtime clock_settime create_module delete_module fanotify_init
finit_module get_kernel_syms get_mempolicy init_module ioperm iopl kcmp kexec_file_load
kexec_load keyctl lookup_dcookie mbind mount move_pages name_to_handle_at nfsservctl
open_by_handle_at perf_event_open pivot_root process_vm_readv process_vm_writev ptrace
query_module quotactl quotactl_fd reboot request_key set_mempolicy set_mempolicy_home_node
setns settimeofday stime swapon swapoff sysfs _sysctl syslog umount umount2 unshare uselib
userfaultfd ustat vm86 vm86old vhangup open_tree move_mount fsopen fsconfig fsmount fspick
mount_setattr pidfd_getfd process_madvise lsm_get_self_attr lsm_set_self_attr lsm_list_modules
afs_syscall tuxcall security vserver putpmsg getpmsg uretprobe
""".split()
# Handled by dedicated rules below.
SPECIAL = {"clone", "clone3", "personality"}
# clone flags that create namespaces (CLONE_NEWNS|NEWCGROUP|NEWUTS|NEWIPC|NEWUSER|NEWPID|NEWNET).
CLONE_NS_MASK = 0x7E020000
ARCH_MAP = [
    {"architecture": "SCMP_ARCH_X86_64", "subArchitectures": ["SCMP_ARCH_X86", "SCMP_ARCH_X32"]},
    {"architecture": "SCMP_ARCH_AARCH64", "subArchitectures": ["SCMP_ARCH_ARM"]},
]


def from_base(path):
    with open(path) as f:
        prof = json.load(f)
    for rule in prof.get("syscalls", []):
        if rule.get("action") != "SCMP_ACT_ALLOW":
            rule["names"] = [n for n in rule["names"] if n not in IO_URING]
    prof["syscalls"] = [r for r in prof["syscalls"] if r.get("names")]
    main = max((r for r in prof["syscalls"] if r.get("action") == "SCMP_ACT_ALLOW"
                and not r.get("args") and not r.get("includes") and not r.get("excludes")),
               key=lambda r: len(r["names"]))
    main["names"] = sorted(set(main["names"]) | set(IO_URING))
    return prof


def from_headers(header):
    names = set()
    with open(header) as f:
        for line in f:
            m = re.match(r"#define __NR_(\w+)\s+\d+", line)
            if m:
                names.add(m.group(1))
    if not set(IO_URING) <= names:
        sys.exit(f"{header} predates io_uring")
    allowed = sorted(names - set(BLOCKED) - SPECIAL)
    return {
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": 1,
        "archMap": ARCH_MAP,
        "syscalls": [
            {"names": allowed, "action": "SCMP_ACT_ALLOW",
             "comment": "Docker default policy: everything but the blocked/privileged syscalls; "
                        "includes io_uring_setup, io_uring_enter, io_uring_register (glommio)"},
            {"names": IO_URING, "action": "SCMP_ACT_ALLOW",
             "comment": "io_uring, stated on its own so it is easy to audit"},
            {"names": ["clone"], "action": "SCMP_ACT_ALLOW",
             "args": [{"index": 0, "value": CLONE_NS_MASK, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}],
             "comment": "clone without namespace flags (x86_64, aarch64: flags are argument 0)"},
            {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38,
             "comment": "ENOSYS: flags cannot be inspected, libc falls back to clone"},
        ] + [
            {"names": ["personality"], "action": "SCMP_ACT_ALLOW",
             "args": [{"index": 0, "value": v, "op": "SCMP_CMP_EQ"}]}
            for v in (0x0, 0x8, 0x20000, 0x20008, 0xFFFFFFFF)
        ],
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", help="Docker's default.json to extend (exact variant)")
    ap.add_argument("--header", default="/usr/include/x86_64-linux-gnu/asm/unistd_64.h")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                  "io_uring.json"))
    a = ap.parse_args()
    prof = from_base(a.base) if a.base else from_headers(a.header)
    with open(a.out, "w") as f:
        json.dump(prof, f, indent=2)
        f.write("\n")
    n = sum(len(r["names"]) for r in prof["syscalls"])
    print(f"wrote {a.out} ({n} syscall names in {len(prof['syscalls'])} rules)")


if __name__ == "__main__":
    main()
