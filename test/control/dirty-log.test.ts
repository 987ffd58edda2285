/**
 * A VF port in `fpo run` (issue 21): its guest memory is a shared file; this
 * test is the guest's driver — it maps nothing, it reads and writes the same
 * file (the kernel's page cache is the shared memory) — setting the queue
 * up and posting buffers. Frames injected to the VM land in its buffers,
 * and `fpo ctl dirty-log` reports exactly the pages the VF's DMA wrote while
 * logging is on.
 */
import { closeSync, openSync, readSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { eth, ipv4, udp, writePcap } from '../../fixtures/packets.js';
import { DESC_BYTES, REG_BUF_LEN, REG_HEAD, REG_MAGIC, REG_RING_AT, REG_RING_SIZE, REG_TAIL, VF_MAGIC } from '../../datapath/ports/vf/vf-port.js';
import { cleanTemp, runCli, tempDir } from '../helpers.js';
import { killAll, startService } from './run-service.js';

afterAll(() => { killAll(); cleanTemp(); });

const PAGE = 4096;
const MEM = 256 * PAGE;
const RING = 64;
const BUF = 2048;
const BUFS_AT = 16 * PAGE;

describe('fpo run with a VF port: frames DMA\'d into guest memory, the dirty log', () => {
  it('the driver (this test) sets the queue up in the shared file; injected frames land in its buffers; dirty-log reports the pages written while on, exactly, and nothing while off', async () => {
    const dir = tempDir('vf');
    const memFile = join(dir, 'vm1.mem');
    const topo = join(dir, 'topo.json');
    const { writeFileSync } = await import('node:fs');
    writeFileSync(topo, JSON.stringify({
      ports: [{ name: 'up0', ppid: 1, role: 'uplink', segments: ['s'] }, { name: 'vf1', ppid: 2, kind: 'vf', memory: MEM, memoryFile: memFile }],
      segments: [{ name: 's' }],
      nodes: [{ name: 'vm1', interfaces: [{ name: 'vm1-eth0', mac: '02:00:00:00:00:01', ip: '10.0.0.1', segment: 's', port: 'vf1' }] }],
    }));
    const s = await startService({ topology: topo, out: dir });
    const ctl = (...a: string[]) => { const r = runCli(['ctl', '-s', s.socket, '--json', ...a]); expect(r.stderr).toBe(''); return JSON.parse(r.stdout); };
    const fd = openSync(memFile, 'r+');
    try {
      const w32 = (at: number, v: number) => { const b = Buffer.alloc(4); b.writeUInt32LE(v >>> 0); writeSync(fd, b, 0, 4, at); };
      const r32 = (at: number) => { const b = Buffer.alloc(4); readSync(fd, b, 0, 4, at); return b.readUInt32LE(); };
      const read = (at: number, n: number) => { const b = Buffer.alloc(n); readSync(fd, b, 0, n, at); return b; };
      // Before the driver sets the queue up, frames to the VM are counted, not written.
      const frame = (k: number) => eth('02:00:00:00:00:01', '02:ee:00:00:00:01', 0x0800, ipv4({ src: '192.0.2.1', dst: '10.0.0.1', proto: 17 }, udp(5000 + k, 9, new Uint8Array(100 + k * 50).fill(k))));
      const cap = (name: string, from: number, n: number) => { const f = join(dir, name); writePcap(f, Array.from({ length: n }, (_, k) => ({ sec: 1, usec: k, data: frame(from + k) }))); return f; };
      s.ctl('inject', cap('early.pcap', 0, 2));
      expect(ctl('dirty-log', 'status', 'vf1').vf.rxNotReady).toBe(2);
      // The driver: the queue's registers, 40 buffers posted (each 2048 bytes apart from page 16 on: two to a page).
      w32(REG_RING_SIZE, RING); w32(REG_RING_AT, PAGE); w32(REG_BUF_LEN, BUF); w32(REG_HEAD, 0); w32(REG_TAIL, 0);
      for (let k = 0; k < 40; k++) {
        const d = PAGE + k * DESC_BYTES;
        const b = Buffer.alloc(DESC_BYTES);
        b.writeUInt32LE(BUFS_AT + k * BUF, 0);
        writeSync(fd, b, 0, DESC_BYTES, d);
      }
      w32(REG_TAIL, 40);
      w32(REG_MAGIC, VF_MAGIC);
      // Off: written, nothing logged.
      s.ctl('inject', cap('a.pcap', 10, 4));
      expect(r32(REG_HEAD)).toBe(4);
      for (let k = 0; k < 4; k++) {
        const f = frame(10 + k);
        expect(read(PAGE + k * DESC_BYTES + 8, 2).readUInt16LE()).toBe(f.length);
        expect(read(PAGE + k * DESC_BYTES + 12, 1)[0]).toBe(3); // DD | EOP
        expect(read(BUFS_AT + k * BUF, f.length).equals(Buffer.from(f))).toBe(true);
      }
      expect(ctl('dirty-log', 'read-and-clear', 'vf1').dirtyPages).toBe(0);
      // On: the next 6 frames (descriptors 4..9 in the ring's page 1, buffers 4..9 = pages 18..20, the head in page 0).
      expect(ctl('dirty-log', 'start', 'vf1').logging).toBe(true);
      s.ctl('inject', cap('b.pcap', 20, 6));
      const got = ctl('dirty-log', 'read-and-clear', 'vf1');
      expect(got.dirty).toEqual([[0, 1], [18, 20]]); // the registers (head written back), the ring, the buffers
      expect(got.dirtyPages).toBe(5);
      expect(got.pf.writesSeen).toBe(6);
      expect(ctl('dirty-log', 'read-and-clear', 'vf1').dirtyPages).toBe(0); // cleared
      // Off again: written, not logged.
      ctl('dirty-log', 'stop', 'vf1');
      s.ctl('inject', cap('c.pcap', 30, 2));
      expect(r32(REG_HEAD)).toBe(12);
      expect(ctl('dirty-log', 'read-and-clear', 'vf1').dirtyPages).toBe(0);
      // Refusals name what was expected.
      expect(runCli(['ctl', '-s', s.socket, 'dirty-log', 'start', 'up0']).stderr).toMatch(/"up0" is no vf port \(vf1\)/);
      expect(runCli(['ctl', '-s', s.socket, 'dirty-log', 'flush', 'vf1']).stderr).toMatch(/expected start, stop, read-and-clear or status/);
      const st = JSON.parse(s.ctl('--json', 'stats').stdout);
      expect(st.packets.in).toBe(st.packets.out + st.packets.dropped);
    } finally {
      closeSync(fd);
      await s.stop();
    }
  }, 60_000);
});
