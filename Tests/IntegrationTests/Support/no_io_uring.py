#!/usr/bin/env python3
"""Runs a command the way a default container runtime would as far as io_uring goes: a seccomp
filter makes io_uring_setup, io_uring_enter and io_uring_register fail with EPERM (Docker 25+
and containerd 2.0's RuntimeDefault profiles do the same). Usage: no_io_uring.py COMMAND [ARG...]"""
import ctypes
import os
import platform
import struct
import sys

PR_SET_NO_NEW_PRIVS = 38
PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2
SECCOMP_RET_ALLOW = 0x7FFF0000
SECCOMP_RET_ERRNO = 0x00050000
EPERM = 1
# The io_uring system calls have the same numbers on every architecture (Linux 5.1+).
IO_URING_CALLS = (425, 426, 427)
ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}[platform.machine()]

BPF_LD_W_ABS = 0x00 | 0x00 | 0x20
BPF_JEQ_K = 0x05 | 0x10 | 0x00
BPF_RET_K = 0x06 | 0x00


def op(code, k, jt=0, jf=0):
    return struct.pack("HBBI", code, jt, jf, k)


program = b"".join([
    op(BPF_LD_W_ABS, 4),                       # seccomp_data.arch
    op(BPF_JEQ_K, ARCH, 0, 5),                 # another ABI: allow
    op(BPF_LD_W_ABS, 0),                       # seccomp_data.nr
    op(BPF_JEQ_K, IO_URING_CALLS[0], 2, 0),
    op(BPF_JEQ_K, IO_URING_CALLS[1], 1, 0),
    op(BPF_JEQ_K, IO_URING_CALLS[2], 0, 1),
    op(BPF_RET_K, SECCOMP_RET_ERRNO | EPERM),
    op(BPF_RET_K, SECCOMP_RET_ALLOW),
])


class SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    libc = ctypes.CDLL(None, use_errno=True)
    buf = ctypes.create_string_buffer(program, len(program))
    prog = SockFprog(len(program) // 8, ctypes.cast(buf, ctypes.c_void_p))
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        sys.exit(f"prctl(PR_SET_NO_NEW_PRIVS): {os.strerror(ctypes.get_errno())}")
    if libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(prog), 0, 0) != 0:
        sys.exit(f"prctl(PR_SET_SECCOMP): {os.strerror(ctypes.get_errno())}")
    os.execvp(sys.argv[1], sys.argv[1:])


if __name__ == "__main__":
    main()
