import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { ROOT, needRoot, needTool } from '../../helpers.js';

// RingPort on one end of a veth pair, in a namespace of the test's own (IPv6 off, so the kernel sends
// nothing of its own on the link: every frame seen is one the test sent); the other end is read and
// written a frame at a time (TapPort with io read: plain read()/write() on an AF_PACKET socket) or by
// a second ring. The work runs in a child process inside the namespace; it prints what it saw as JSON.

const NS = `fpor-${process.pid}`;
const DIST = join(ROOT, 'dist', 'datapath');
const sh = (...cmd: string[]) => spawnSync(cmd[0], cmd.slice(1), { encoding: 'utf8', timeout: 60_000 });

afterAll(() => {
  sh('ip', 'netns', 'del', NS);
});

function setUp(): void {
  sh('ip', 'netns', 'del', NS);
  const r = sh('sh', '-c', `ip netns add ${NS} && ip netns exec ${NS} sysctl -qw net.ipv6.conf.default.disable_ipv6=1 net.ipv6.conf.all.disable_ipv6=1 && ip -n ${NS} link add r0 type veth peer name r1 && ip -n ${NS} link set r0 up && ip -n ${NS} link set r1 up`);
  expect(r.stderr).toBe('');
  expect(r.status).toBe(0);
}

/** Runs `body` (an ES module's code, with RingPort, TapPort, PacketBatch, libc, sleep and frame() in scope) in the namespace. */
function inNs(body: string): any {
  const code = `
    import { RingPort } from ${JSON.stringify(join(DIST, 'ports', 'ring-port.js'))};
    import { TapPort } from ${JSON.stringify(join(DIST, 'ports', 'tap-port.js'))};
    import { PacketBatch } from ${JSON.stringify(join(DIST, 'batch.js'))};
    import { libc } from ${JSON.stringify(join(DIST, 'ports', 'libc.js'))};
    import { execFileSync } from 'node:child_process';
    const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
    const u32 = (u8, o) => ((u8[o] << 24) | (u8[o + 1] << 16) | (u8[o + 2] << 8) | u8[o + 3]) >>> 0;
    // Frame k of length len: broadcast from 02:00:00:00:72:01, ethertype 0x88b5 (or tagged), k in bytes 16..20, then a pattern.
    function frame(k, len, tag) {
      const f = Buffer.alloc(len);
      f.fill(0xff, 0, 6);
      Buffer.from([2, 0, 0, 0, 0x72, 1]).copy(f, 6);
      let p = 12;
      for (const [tpid, tci] of tag ?? []) { f.writeUInt16BE(tpid, p); f.writeUInt16BE(tci, p + 2); p += 4; }
      f.writeUInt16BE(0x88b5, p);
      f.writeUInt32BE(k, p + 2);
      for (let i = p + 6; i < len; i++) f[i] = (k * 7 + i) & 0xff;
      return f;
    }
    ${body}`;
  const r = spawnSync('ip', ['netns', 'exec', NS, process.execPath, '--input-type=module', '-e', code], { encoding: 'utf8', timeout: 90_000, maxBuffer: 256 << 20 });
  expect(r.stderr).toBe('');
  expect({ status: r.status, signal: r.signal }).toEqual({ status: 0, signal: null });
  return JSON.parse(r.stdout.trim().split('\n').at(-1)!);
}

describe.each([3, 2])('RingPort (AF_PACKET, TPACKET_V%i rx ring and tx ring)', (version) => {
  it('receives frames of every size from 60 to 1514 bytes, tagged 802.1Q, 802.1ad+802.1Q and untagged, whole and in order, over a ring that wraps around many times', (ctx) => {
    needRoot(ctx, 'makes a namespace and AF_PACKET sockets');
    needTool(ctx, 'ip', 'makes the namespace and the veth pair');
    setUp();
    const r = inNs(`
      // A small ring (V3: 8 blocks of 8 KiB; V2: 64 slots) so that 1455 frames of up to 1.5 KB wrap it dozens of times.
      const ring = new RingPort('r0', { rxBlockBytes: 8192, rxBlocks: 8, rxFrames: 64, version: ${version} });
      const peer = new TapPort('r1', 1, 'afpacket');
      const b = new PacketBatch(64);
      const sent = [];
      const got = [];
      const drain = () => {
        let n;
        while ((n = ring.fill(b, 5, 0)) > 0) for (let i = 0; i < n; i++) {
          if (b.drop[i] !== 0 || b.inPpid[i] !== 5) throw new Error('bad rx facts');
          got.push(Buffer.from(b.buf.subarray(b.off[i], b.off[i] + b.caplen[i])).toString('hex') + '/' + b.wirelen[i]);
        }
      };
      let k = 0;
      for (let len = 60; len <= 1514; len++, k++) {
        const tag = k % 3 === 1 ? [[0x8100, (k * 37) & 0xffff]] : k % 3 === 2 ? [[0x88a8, 100 + k], [0x8100, 0x2000 | (k & 0xfff)]] : undefined;
        const f = frame(k, len, tag);
        if (libc().write(peer.fd, f, len) !== len) throw new Error('write ' + len);
        sent.push(f.toString('hex') + '/' + len);
        // Read now and then, as a busy switch would: blocks are handed over as they fill or time out.
        if (k % 16 === 15) { await sleep(3); drain(); }
      }
      for (let t = 0; t < 200 && got.length < sent.length; t++) { await sleep(5); drain(); }
      console.log(JSON.stringify({ sent, got, restored: ring.rxVlanRestored, rx: ring.rxPackets, missed: ring.rxMissed }));
    `);
    expect(r.sent.length).toBe(1455);
    expect(r.missed).toBe(0);
    expect(r.rx).toBe(1455);
    expect(r.got).toEqual(r.sent); // byte for byte, tags in place, same order
    expect(r.restored).toBe(970); // every tagged frame (k % 3 = 1 or 2) had its outer tag put back
  });

  it('a batch that takes every block (or slot) of the ring reads each frame once, and the ring goes on after it', (ctx) => {
    needRoot(ctx, 'makes a namespace and AF_PACKET sockets');
    needTool(ctx, 'ip', 'makes the namespace and the veth pair');
    setUp();
    const r = inNs(`
      // V3: 4 blocks of 4 KiB (at most two 1514-byte frames each); V2: 32 slots (the fewest: a 64 KiB
      // block of 2 KiB slots). The ring fills up while fpo is away; one fill with room for more than the
      // ring holds takes every frame once (not the first block or slot again: it is still the batch's),
      // and the next fill, after more frames, takes those.
      const ring = new RingPort('r0', { rxBlockBytes: 4096, rxBlocks: 4, rxFrames: 8, retireMs: 1, version: ${version} });
      const peer = new TapPort('r1', 1, 'afpacket');
      const b = new PacketBatch(64);
      const ks = (n) => Array.from({ length: n }, (_, i) => u32(b.buf, b.off[i] + 14));
      for (let k = 0; k < 40; k++) libc().write(peer.fd, frame(k, 1514), 1514);
      await sleep(30);
      const first = ks(ring.fill(b, 1, 0));
      const missed = ring.rxMissed;
      const between = ring.fill(b, 1, 0); // the batch is done: its blocks go back (no new frame yet)
      for (let k = 100; k < 104; k++) { libc().write(peer.fd, frame(k, 1514), 1514); await sleep(3); }
      await sleep(30);
      const second = [];
      let n;
      while ((n = ring.fill(b, 1, 0)) > 0) second.push(...ks(n));
      console.log(JSON.stringify({ first, missed, between, second }));
    `);
    expect(r.between).toBe(0);
    const m = r.first.length;
    expect(r.first).toEqual(Array.from({ length: m }, (_, i) => i)); // each once, in order
    if (version === 3) expect(m).toBeGreaterThanOrEqual(4); // every block in the one fill
    else expect(m).toBe(32); // every slot
    expect(m + r.missed).toBe(40);
    expect(r.second).toEqual([100, 101, 102, 103]);
  });

  it('sends a batch with one send(): frames straight from its own rx blocks, VLAN pushed and popped per copy; the peer gets them whole and in order', (ctx) => {
    needRoot(ctx, 'makes a namespace and AF_PACKET sockets');
    needTool(ctx, 'ip', 'makes the namespace and the veth pair');
    setUp();
    const r = inNs(`
      const ring = new RingPort('r0', { version: ${version} });
      const back = new RingPort('r1', { version: ${version} }); // the peer reads with a ring too: a read() socket would lose the tags
      const peer = new TapPort('r1', 1, 'afpacket');
      const b = new PacketBatch(256);
      const b2 = new PacketBatch(256);
      // 200 frames in, from the peer, then the ring sends each back out three times: plain, a VLAN 77
      // pushed (tx code -3 - 77), and popped (-2) for the tagged ones.
      const sent = [];
      for (let k = 0; k < 200; k++) {
        const f = frame(k, 60 + k * 7, k % 2 ? [[0x8100, 0x6000 | 5]] : undefined);
        libc().write(peer.fd, f, f.length);
        sent.push(f);
      }
      let n = 0;
      for (let t = 0; t < 200 && n < 200; t++) { await sleep(5); n += ring.fill(b, 1, 0); if (n > 0 && n < 200) throw new Error('one batch expected, got ' + n); }
      const idx = new Uint16Array(600);
      const enc = new Int32Array(600);
      for (let i = 0; i < 200; i++) { idx[3 * i] = i; enc[3 * i] = -1; idx[3 * i + 1] = i; enc[3 * i + 1] = -3 - 77; idx[3 * i + 2] = i; enc[3 * i + 2] = -2; }
      const sends = [];
      ring.writeBatch(b, idx, 0, 600, enc);
      const got = [];
      for (let t = 0; t < 200 && got.length < 600; t++) {
        await sleep(5);
        const m = back.fill(b2, 2, 0);
        for (let i = 0; i < m; i++) got.push(Buffer.from(b2.buf.subarray(b2.off[i], b2.off[i] + b2.caplen[i])).toString('hex'));
      }
      console.log(JSON.stringify({ n, got, tx: ring.txPackets, full: ring.txRingFull, err: ring.txErrors, sent: sent.map((f) => f.toString('hex')) }));
    `);
    expect(r.n).toBe(200);
    expect(r.tx).toBe(600);
    expect(r.full).toBe(0);
    expect(r.err).toBe(0);
    // The expected copies, worked out here from the frames sent.
    const expected: string[] = [];
    for (const h of r.sent as string[]) {
      const f = Buffer.from(h, 'hex');
      const tagged = f.readUInt16BE(12) === 0x8100;
      expected.push(h);
      const pushed = tagged ? Buffer.from(f) : Buffer.concat([f.subarray(0, 12), Buffer.from([0x81, 0, 0, 0]), f.subarray(12)]);
      pushed[14] = (pushed[14] & 0xf0) | (77 >> 8);
      pushed[15] = 77 & 0xff;
      if (tagged) pushed[14] = 0x60; // a tag with VID 5 is not a priority tag: a new tag goes in front
      expected.push(tagged ? Buffer.concat([f.subarray(0, 12), Buffer.from([0x81, 0, 0, 77]), f.subarray(12)]).toString('hex') : pushed.toString('hex'));
      expected.push(tagged ? Buffer.concat([f.subarray(0, 12), f.subarray(16)]).toString('hex') : h);
    }
    expect(r.got.length).toBe(600);
    expect(r.got).toEqual(expected);
  });

  it('a full tx ring drops and counts, never loses silently: the link down holds every slot; up again, the ring sends', (ctx) => {
    needRoot(ctx, 'makes a namespace and AF_PACKET sockets');
    needTool(ctx, 'ip', 'makes the namespace and the veth pair');
    setUp();
    const r = inNs(`
      // 16 slots (4 KiB frames, one 64 KiB block).
      const ring = new RingPort('r0', { txFrameBytes: 4096, txFrames: 16, version: ${version} });
      const back = new RingPort('r1', { version: ${version} });
      const peer = new TapPort('r1', 1, 'afpacket');
      const b = new PacketBatch(64);
      for (let k = 0; k < 40; k++) libc().write(peer.fd, frame(k, 100), 100);
      let n = 0;
      for (let t = 0; t < 200 && n < 40; t++) { await sleep(5); n += ring.fill(b, 1, 0); }
      const idx = Uint16Array.from({ length: 40 }, (_, i) => i);
      execFileSync('ip', ['link', 'set', 'r0', 'down']);
      ring.writeBatch(b, idx, 0, 40);
      const down = { tx: ring.txPackets, full: ring.txRingFull };
      execFileSync('ip', ['link', 'set', 'r0', 'up']);
      await sleep(50);
      ring.writeBatch(b, idx, 0, 0); // nothing new: no send
      const still = ring.txPackets;
      // One frame more: its slot is held, so writeBatch sends what the ring holds (the first send()
      // reports the link's earlier ENETDOWN, the second sends) and then queues it.
      ring.writeBatch(b, idx, 0, 1);
      const b2 = new PacketBatch(64);
      let seen = 0;
      for (let t = 0; t < 200 && seen < 17; t++) { await sleep(5); seen += back.fill(b2, 2, 0); }
      console.log(JSON.stringify({ n, down, still, tx: ring.txPackets, full: ring.txRingFull, seen, sendErrors: ring.txSendErrors }));
    `);
    expect(r.n).toBe(40);
    expect(r.down).toEqual({ tx: 16, full: 24 });
    expect(r.still).toBe(16);
    expect(r.tx).toBe(17);
    expect(r.full).toBe(24); // the 24 that found no slot while the link was down, and no more
    expect(r.seen).toBe(17); // the 16 held and the new one: none lost without a count
    expect(r.sendErrors).toBeGreaterThanOrEqual(1);
  });

  it('takes no frame of another interface, even while it is being set up (the socket is bound before it takes any)', (ctx) => {
    needRoot(ctx, 'makes a namespace and AF_PACKET sockets');
    needTool(ctx, 'ip', 'makes the namespace and the veth pairs');
    needTool(ctx, 'cc', 'builds the sender that floods the other pair');
    setUp();
    const blaster = join(ROOT, 'dist', 'blast-ring-test');
    expect(sh('cc', '-O2', '-o', blaster, join(ROOT, 'bench', 'ports', 'blast.c')).status).toBe(0);
    expect(sh('sh', '-c', `ip -n ${NS} link add r2 type veth peer name r3 && ip -n ${NS} link set r2 up && ip -n ${NS} link set r3 up`).status).toBe(0);
    const r = inNs(`
      // r3 floods r2 for 3 s; meanwhile 30 ring ports are opened on r0 (and their frames read), one after another.
      const { spawn } = await import('node:child_process');
      const flood = spawn(${JSON.stringify(blaster)}, ['r3', '02:00:00:00:66:01', '02:00:00:00:66:02', '3'], { stdio: 'ignore' });
      await sleep(200);
      const peer = new TapPort('r1', 1, 'afpacket');
      const b = new PacketBatch(256);
      let ours = 0, others = 0;
      for (let k = 0; k < 30; k++) {
        const ring = new RingPort('r0', { rxBlockBytes: 1 << 16, rxBlocks: 4, rxFrames: 64, version: ${version} });
        const f = frame(k, 64);
        libc().write(peer.fd, f, 64);
        for (let t = 0; t < 100; t++) {
          await sleep(2);
          const n = ring.fill(b, 1, 0);
          let got = false;
          for (let i = 0; i < n; i++) {
            if (b.buf[b.off[i] + 11] === 1 && b.buf[b.off[i] + 10] === 0x72) { ours++; got = true; } else others++;
          }
          if (got) break;
        }
        ring.close();
      }
      flood.kill();
      console.log(JSON.stringify({ ours, others }));
    `);
    expect(r.ours).toBe(30);
    expect(r.others).toBe(0);
  });

  it('a frame longer than the interface sends is refused and counted, and the frames after it go (no stalled ring)', (ctx) => {
    needRoot(ctx, 'makes a namespace and AF_PACKET sockets');
    needTool(ctx, 'ip', 'makes the namespace and the veth pair');
    setUp();
    // In on r0 (MTU 1500), out of r2 (MTU 1000) to r3.
    expect(sh('sh', '-c', `ip -n ${NS} link add r2 mtu 1000 type veth peer name r3 mtu 1000 && ip -n ${NS} link set r2 up && ip -n ${NS} link set r3 up`).status).toBe(0);
    const r = inNs(`
      const ring = new RingPort('r0', { version: ${version} });
      const out = new RingPort('r2', { version: ${version} });
      const back = new RingPort('r3', { version: ${version} });
      const peer = new TapPort('r1', 1, 'afpacket');
      const b = new PacketBatch(64);
      // 11 frames come in on r0: one of 1200 bytes, then ten of 100; all go out of r2.
      libc().write(peer.fd, frame(0, 1200), 1200);
      for (let k = 1; k <= 10; k++) libc().write(peer.fd, frame(k, 100), 100);
      let n = 0;
      for (let t = 0; t < 200 && n < 11; t++) { await sleep(5); n += ring.fill(b, 1, 0); }
      out.writeBatch(b, Uint16Array.from({ length: 11 }, (_, i) => i), 0, 11);
      const b2 = new PacketBatch(64);
      const lens = [];
      for (let t = 0; t < 100 && lens.length < 10; t++) { await sleep(5); const m = back.fill(b2, 2, 0); for (let i = 0; i < m; i++) lens.push(b2.caplen[i]); }
      console.log(JSON.stringify({ n, maxFrame: out.maxFrame, tx: out.txPackets, err: out.txErrors, lens }));
    `);
    expect(r.n).toBe(11);
    expect(r.maxFrame).toBe(1018);
    expect(r.err).toBe(1);
    expect(r.tx).toBe(10);
    expect(r.lens).toEqual(Array(10).fill(100));
  });
});
