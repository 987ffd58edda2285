/**
 * The few libc calls the live ports need, through koffi (a prebuilt FFI, no
 * compiler at install): open, ioctl, read, write, poll, close, errno, and
 * for ring ports mmap (port-memory.ts), send and getsockopt.
 * Chosen over a native addon because it installs from the registry as is
 * and a call costs ~0.4 µs here (measured: a non-blocking read of an empty
 * TAP, 440 ns), small next to the syscall itself.
 */
import { createRequire } from 'node:module';

const require = createRequire(import.meta.url);

export interface Libc {
  open(path: string, flags: number): number;
  ioctl(fd: number, req: number, arg: Buffer): number;
  /** ioctl with a value, not a pointer, as its argument (TUNSETOFFLOAD). */
  ioctlValue(fd: number, req: number, arg: number): number;
  read(fd: number, buf: Buffer, n: number): number;
  write(fd: number, buf: Buffer, n: number): number;
  poll(fds: Buffer, nfds: number, timeoutMs: number): number;
  close(fd: number): number;
  errno(): number;
  socket(domain: number, type: number, protocol: number): number;
  bind(fd: number, addr: Buffer, len: number): number;
  setsockopt(fd: number, level: number, name: number, val: Buffer, len: number): number;
  ifNameToIndex(name: string): number;
  /** sched_setscheduler(0, …): the calling thread's policy (1 SCHED_FIFO, 2 SCHED_RR) and priority. */
  setScheduler(policy: number, priority: number): number;
  sendto(fd: number, buf: Uint8Array, n: number, flags: number, addr: Buffer, addrLen: number): number;
  /** Attaches a classic BPF program (SO_ATTACH_FILTER): [code, jt, jf, k] per instruction. Returns setsockopt's result. */
  attachFilter(fd: number, prog: [number, number, number, number][]): number;
  /** Reserves `len` bytes of address space (PROT_NONE, no memory behind it); returns its address and an ArrayBuffer over it (port-memory.ts). */
  reserve(len: number): { base: bigint; bytes: ArrayBuffer } | null;
  /** mmap(addr, …, MAP_FIXED | flags, fd, off): places a mapping at `addr` (inside a reservation). Returns whether it worked. */
  mapFixed(addr: bigint, len: number, prot: number, flags: number, fd: number, off?: number): boolean;
  /** The bpf(2) system call: `cmd` with its union bpf_attr in `attr`. Returns its result (an fd, 0) or -1 (errno()). */
  bpf(cmd: number, attr: Buffer): number;
  /** `len` bytes of C memory with their address, for what the kernel reads through a pointer (bpf_attr's): free() when done. */
  cMemory(len: number): { addr: bigint; bytes: Uint8Array; free(): void };
  /** recvfrom(fd, NULL, 0, flags): wakes an AF_XDP socket's receive side. */
  recvNull(fd: number, flags: number): number;
  /** send(fd, NULL, 0, flags): an AF_PACKET socket sends what its tx ring holds. */
  sendRing(fd: number, flags: number): number;
  /** getsockopt(fd, level, name, val, &len): returns the length written, or -1. */
  getsockopt(fd: number, level: number, name: number, val: Buffer): number;
}

let cached: Libc | null = null;

/** Loads libc through koffi on first use (the replay path never needs it). */
export function libc(): Libc {
  if (cached) return cached;
  const koffi = require('koffi') as typeof import('koffi');
  const lib = koffi.load('libc.so.6');
  const errnoLoc = lib.func('int *__errno_location()');
  const ioctl = lib.func('int ioctl(int fd, unsigned long req, _Inout_ uint8_t *arg)');
  const ioctlValue = lib.func('int ioctl(int fd, unsigned long req, unsigned long arg)');
  const setScheduler = lib.func('int sched_setscheduler(int pid, int policy, const uint8_t *param)');
  const SockFilter = koffi.struct('sock_filter', { code: 'uint16', jt: 'uint8', jf: 'uint8', k: 'uint32' });
  const SockFprog = koffi.struct('sock_fprog', { len: 'uint16', filter: 'void *' });
  const mmapPtr = lib.func('void *mmap(void *addr, size_t len, int prot, int flags, int fd, long off)');
  const mmapAt = lib.func('uintptr_t mmap(uintptr_t addr, size_t len, int prot, int flags, int fd, long off)');
  const sendNull = lib.func('long send(int fd, void *buf, unsigned long n, int flags)');
  const recvNull = lib.func('long recvfrom(int fd, void *buf, unsigned long n, int flags, void *addr, void *len)');
  // bpf(2) has no libc wrapper: syscall(SYS_bpf = 321 on x86-64, cmd, attr, size).
  const syscallBpf = lib.func('long syscall(long nr, long cmd, _Inout_ uint8_t *attr, unsigned long size)');
  const getsockopt = lib.func('int getsockopt(int fd, int level, int name, _Out_ uint8_t *val, _Inout_ uint32_t *len)');
  const setsockoptFprog = lib.func('int setsockopt(int fd, int level, int name, const sock_fprog *val, unsigned int len)');
  cached = {
    open: lib.func('int open(const char *path, int flags)') as Libc['open'],
    ioctl: (fd, req, arg) => ioctl(fd, req, arg) as number,
    ioctlValue: (fd, req, arg) => ioctlValue(fd, req, arg) as number,
    read: lib.func('long read(int fd, _Out_ uint8_t *buf, unsigned long n)') as Libc['read'],
    write: lib.func('long write(int fd, const uint8_t *buf, unsigned long n)') as Libc['write'],
    poll: lib.func('int poll(_Inout_ uint8_t *fds, unsigned long nfds, int timeout)') as Libc['poll'],
    close: lib.func('int close(int fd)') as Libc['close'],
    errno: () => koffi.decode(errnoLoc(), 'int') as number,
    socket: lib.func('int socket(int domain, int type, int protocol)') as Libc['socket'],
    bind: lib.func('int bind(int fd, const uint8_t *addr, unsigned int len)') as Libc['bind'],
    setsockopt: lib.func('int setsockopt(int fd, int level, int name, const uint8_t *val, unsigned int len)') as Libc['setsockopt'],
    ifNameToIndex: lib.func('unsigned int if_nametoindex(const char *name)') as Libc['ifNameToIndex'],
    setScheduler: (policy, priority) => {
      const param = Buffer.alloc(4);
      param.writeInt32LE(priority, 0);
      return setScheduler(0, policy, param) as number;
    },
    sendto: lib.func('long sendto(int fd, const uint8_t *buf, unsigned long n, int flags, const uint8_t *addr, unsigned int len)') as Libc['sendto'],
    reserve: (len) => {
      const p = mmapPtr(null, len, 0 /* PROT_NONE */, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
      const base = BigInt(koffi.address(p));
      if (p === null || base === 0xffffffffffffffffn) return null;
      return { base, bytes: koffi.view(p, len) };
    },
    mapFixed: (addr, len, prot, flags, fd, off = 0) => {
      const r = mmapAt(addr, len, prot, flags | MAP_FIXED, fd, off) as number | bigint;
      return BigInt(r) === addr;
    },
    bpf: (cmd, attr) => Number(syscallBpf(SYS_BPF, cmd, attr, attr.length)),
    cMemory: (len) => {
      const p = koffi.alloc('uint8_t', len);
      const bytes = new Uint8Array(koffi.view(p, len));
      bytes.fill(0);
      return { addr: BigInt(koffi.address(p)), bytes, free: () => koffi.free(p) };
    },
    recvNull: (fd, flags) => Number(recvNull(fd, null, 0, flags, null, null)),
    sendRing: (fd, flags) => sendNull(fd, null, 0, flags) as number,
    getsockopt: (fd, level, name, val) => {
      const len = [val.length];
      return getsockopt(fd, level, name, val, len) < 0 ? -1 : len[0];
    },
    attachFilter: (fd, prog) => {
      // struct sock_fprog points at the instructions: they live in memory koffi allocates (and
      // the kernel copies at attach, so it may be freed after).
      const mem = koffi.alloc(SockFilter, prog.length);
      try {
        koffi.encode(mem, koffi.array(SockFilter, prog.length), prog.map(([code, jt, jf, k]) => ({ code, jt, jf, k })));
        return setsockoptFprog(fd, 1 /* SOL_SOCKET */, 26 /* SO_ATTACH_FILTER */, { len: prog.length, filter: mem }, koffi.sizeof(SockFprog)) as number;
      } finally {
        koffi.free(mem);
      }
    },
  };
  return cached;
}

export const O_RDWR = 2;
export const O_NONBLOCK = 0x800;
export const EAGAIN = 11;
export const POLLIN = 1;
export const PROT_READ_WRITE = 3;
export const MAP_SHARED = 0x01;
export const MAP_PRIVATE = 0x02;
export const MAP_FIXED = 0x10;
export const MAP_ANONYMOUS = 0x20;
export const MAP_NORESERVE = 0x4000;
export const MSG_DONTWAIT = 0x40;
const SYS_BPF = 321;
