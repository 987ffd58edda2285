import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { ROOT, needRoot, needTool } from '../../helpers.js';

// XdpPort (AF_XDP, fpo's XDP program on the interface) on one end of a veth pair, in a namespace of the
// test's own (IPv6 off: every frame seen is one the test sent); the other end is written a frame at a
// time (TapPort with io read) and read by a RingPort. The work runs in a child process inside the
// namespace; it prints what it saw as JSON.

const NS = `fpox-${process.pid}`;
const DIST = join(ROOT, 'dist', 'datapath');
const sh = (...cmd: string[]) => spawnSync(cmd[0], cmd.slice(1), { encoding: 'utf8', timeout: 60_000 });

afterAll(() => {
  sh('ip', 'netns', 'del', NS);
});

function setUp(): void {
  sh('ip', 'netns', 'del', NS);
  const r = sh('sh', '-c', `ip netns add ${NS} && ip netns exec ${NS} sysctl -qw net.ipv6.conf.default.disable_ipv6=1 net.ipv6.conf.all.disable_ipv6=1 && ip -n ${NS} link add x0 type veth peer name x1 && ip -n ${NS} link set x0 up && ip -n ${NS} link set x1 up`);
  expect(r.stderr).toBe('');
  expect(r.status).toBe(0);
}

/** Runs `body` (an ES module's code, with XdpPort, RingPort, TapPort, PacketBatch, libc, sleep, ipLink and frame() in scope) in the namespace. */
function inNs(body: string, expectExit: number | null = 0): any {
  const code = `
    import { XdpPort } from ${JSON.stringify(join(DIST, 'ports', 'xdp-port.js'))};
    import { RingPort } from ${JSON.stringify(join(DIST, 'ports', 'ring-port.js'))};
    import { TapPort } from ${JSON.stringify(join(DIST, 'ports', 'tap-port.js'))};
    import { PacketBatch } from ${JSON.stringify(join(DIST, 'batch.js'))};
    import { libc } from ${JSON.stringify(join(DIST, 'ports', 'libc.js'))};
    import { execFileSync } from 'node:child_process';
    const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
    const u32 = (u8, o) => ((u8[o] << 24) | (u8[o + 1] << 16) | (u8[o + 2] << 8) | u8[o + 3]) >>> 0;
    const ipLink = (dev) => execFileSync('ip', ['-d', 'link', 'show', dev], { encoding: 'utf8' });
    // Frame k of length len: broadcast from 02:00:00:00:74:01, ethertype 0x88b5 (or tagged), k after it, then a pattern.
    function frame(k, len, tag) {
      const f = Buffer.alloc(len);
      f.fill(0xff, 0, 6);
      Buffer.from([2, 0, 0, 0, 0x74, 1]).copy(f, 6);
      let p = 12;
      for (const [tpid, tci] of tag ?? []) { f.writeUInt16BE(tpid, p); f.writeUInt16BE(tci, p + 2); p += 4; }
      f.writeUInt16BE(0x88b5, p);
      f.writeUInt32BE(k, p + 2);
      for (let i = p + 6; i < len; i++) f[i] = (k * 7 + i) & 0xff;
      return f;
    }
    ${body}`;
  const r = spawnSync('ip', ['netns', 'exec', NS, process.execPath, '--input-type=module', '-e', code], { encoding: 'utf8', timeout: 90_000, maxBuffer: 256 << 20 });
  if (expectExit === 0) expect(r.stderr).toBe('');
  expect({ status: r.status, stderr: r.status === expectExit ? '' : r.stderr }).toEqual({ status: expectExit, stderr: '' });
  return JSON.parse(r.stdout.trim().split('\n').at(-1)!);
}

describe('XdpPort (AF_XDP: fpo\'s XDP program, UMEM, fill/rx/tx/completion rings)', () => {
  it('receives frames of every size from 60 to 1514 bytes, tagged and untagged, whole and in order, over rings that wrap around many times', (ctx) => {
    needRoot(ctx, 'makes a namespace, loads an XDP program, opens AF_XDP sockets');
    needTool(ctx, 'ip', 'makes the namespace and the veth pair');
    setUp();
    const r = inNs(`
      // 64 rx chunks and a batch of 32: 1455 frames wrap the fill and rx rings ~23 times.
      const port = new XdpPort('x0', 32, { rxFrames: 64 });
      const peer = new TapPort('x1', 1, 'afpacket');
      const b = new PacketBatch(32);
      const sent = [];
      const got = [];
      const drain = () => {
        let n;
        while ((n = port.fill(b, 5, 1_700_000_000_123_456)) > 0) for (let i = 0; i < n; i++) {
          if (b.drop[i] !== 0 || b.inPpid[i] !== 5 || b.tsA[i] !== 1_700_000_000 || b.tsB[i] !== 123_456) throw new Error('bad rx facts');
          got.push(Buffer.from(b.buf.subarray(b.off[i], b.off[i] + b.caplen[i])).toString('hex') + '/' + b.wirelen[i]);
        }
      };
      let k = 0;
      for (let len = 60; len <= 1514; len++, k++) {
        const tag = k % 3 === 1 ? [[0x8100, (k * 37) & 0xffff]] : k % 3 === 2 ? [[0x88a8, 100 + k], [0x8100, 0x2000 | (k & 0xfff)]] : undefined;
        const f = frame(k, len, tag);
        if (libc().write(peer.fd, f, len) !== len) throw new Error('write ' + len);
        sent.push(f.toString('hex') + '/' + len);
        if (k % 16 === 15) drain();
      }
      for (let t = 0; t < 200 && got.length < sent.length; t++) { await sleep(5); drain(); }
      console.log(JSON.stringify({ mode: port.mode, sent, got, rx: port.rxPackets, missed: port.rxMissed, link: ipLink('x0') }));
    `);
    expect(r.mode).toBe('af-xdp-copy-native'); // veth runs XDP in its driver
    expect(r.link).toMatch(/prog\/xdp id \d+ name fpo_xsk/);
    expect(r.sent.length).toBe(1455);
    expect(r.missed).toBe(0);
    expect(r.rx).toBe(1455);
    expect(r.got).toEqual(r.sent); // byte for byte, tags in place, same order
  });

  it('sends a batch from its own rx chunks, VLAN pushed and popped per copy, through a tx pool smaller than the batch; the peer gets them whole and in order', (ctx) => {
    needRoot(ctx, 'makes a namespace, loads an XDP program, opens AF_XDP sockets');
    needTool(ctx, 'ip', 'makes the namespace and the veth pair');
    setUp();
    const r = inNs(`
      // 64 tx chunks for 600 copies: the port takes chunks back from the completion ring as the kernel sends.
      const port = new XdpPort('x0', 256, { txFrames: 64 });
      const back = new RingPort('x1', {});
      const peer = new TapPort('x1', 1, 'afpacket');
      const b = new PacketBatch(256);
      const b2 = new PacketBatch(256);
      const sent = [];
      for (let k = 0; k < 200; k++) {
        const f = frame(k, 60 + k * 7, k % 2 ? [[0x8100, 0x6000 | 5]] : undefined);
        libc().write(peer.fd, f, f.length);
        sent.push(f);
      }
      let n = 0;
      for (let t = 0; t < 200 && n < 200; t++) { await sleep(5); n += port.fill(b, 1, 0); if (n > 0 && n < 200) throw new Error('one batch expected, got ' + n); }
      const idx = new Uint16Array(600);
      const enc = new Int32Array(600);
      for (let i = 0; i < 200; i++) { idx[3 * i] = i; enc[3 * i] = -1; idx[3 * i + 1] = i; enc[3 * i + 1] = -3 - 77; idx[3 * i + 2] = i; enc[3 * i + 2] = -2; }
      port.writeBatch(b, idx, 0, 600, enc);
      const got = [];
      for (let t = 0; t < 200 && got.length < 600; t++) {
        await sleep(5);
        const m = back.fill(b2, 2, 0);
        for (let i = 0; i < m; i++) got.push(Buffer.from(b2.buf.subarray(b2.off[i], b2.off[i] + b2.caplen[i])).toString('hex'));
      }
      console.log(JSON.stringify({ n, got, tx: port.txPackets, full: port.txRingFull, err: port.txErrors, sendErr: port.txSendErrors, sent: sent.map((f) => f.toString('hex')) }));
    `);
    expect(r.n).toBe(200);
    expect({ tx: r.tx, full: r.full, err: r.err, sendErr: r.sendErr }).toEqual({ tx: 600, full: 0, err: 0, sendErr: 0 });
    const expected: string[] = [];
    for (const h of r.sent as string[]) {
      const f = Buffer.from(h, 'hex');
      const tagged = f.readUInt16BE(12) === 0x8100;
      expected.push(h);
      expected.push(tagged
        ? Buffer.concat([f.subarray(0, 12), Buffer.from([0x81, 0, 0, 77]), f.subarray(12)]).toString('hex')
        : Buffer.concat([f.subarray(0, 12), Buffer.from([0x81, 0, 0, 77]), f.subarray(12)]).toString('hex'));
      expected.push(tagged ? Buffer.concat([f.subarray(0, 12), f.subarray(16)]).toString('hex') : h);
    }
    expect(r.got.length).toBe(600);
    expect(r.got).toEqual(expected);
  });

  it('overload sheds at the rings, counted: a sender not read holds every chunk, the kernel counts the rest as missed, rx + missed = sent', (ctx) => {
    needRoot(ctx, 'makes a namespace, loads an XDP program, opens AF_XDP sockets');
    needTool(ctx, 'ip', 'makes the namespace and the veth pair');
    setUp();
    const r = inNs(`
      const port = new XdpPort('x0', 64, { rxFrames: 64 });
      const peer = new TapPort('x1', 1, 'afpacket');
      const b = new PacketBatch(64);
      for (let k = 0; k < 1000; k++) libc().write(peer.fd, frame(k, 100), 100);
      await sleep(50);
      const missedBeforeRead = port.rxMissed;
      const ks = [];
      let n;
      while ((n = port.fill(b, 1, 0)) > 0) for (let i = 0; i < n; i++) ks.push(u32(b.buf, b.off[i] + 14));
      // Read, the chunks go back: the next frames land again.
      for (let k = 1000; k < 1010; k++) libc().write(peer.fd, frame(k, 100), 100);
      await sleep(50);
      while ((n = port.fill(b, 1, 0)) > 0) for (let i = 0; i < n; i++) ks.push(u32(b.buf, b.off[i] + 14));
      console.log(JSON.stringify({ missedBeforeRead, missed: port.rxMissed, rx: port.rxPackets, ks }));
    `);
    expect(r.missedBeforeRead).toBe(1000 - 64);
    expect(r.missed).toBe(1000 - 64);
    expect(r.rx).toBe(64 + 10);
    expect(r.ks).toEqual([...Array.from({ length: 64 }, (_, i) => i), ...Array.from({ length: 10 }, (_, i) => 1000 + i)]);
  });

  it('a full tx pool drops and counts, never loses silently: the link down holds every chunk; up again, the port sends', (ctx) => {
    needRoot(ctx, 'makes a namespace, loads an XDP program, opens AF_XDP sockets');
    needTool(ctx, 'ip', 'makes the namespace and the veth pair');
    setUp();
    const r = inNs(`
      const port = new XdpPort('x0', 64, { txFrames: 64 });
      const back = new RingPort('x1', {});
      const peer = new TapPort('x1', 1, 'afpacket');
      const b = new PacketBatch(64);
      for (let k = 0; k < 40; k++) libc().write(peer.fd, frame(k, 100), 100);
      let n = 0;
      for (let t = 0; t < 200 && n < 40; t++) { await sleep(5); n += port.fill(b, 1, 0); }
      const idx = Uint16Array.from({ length: 40 }, (_, i) => i);
      execFileSync('ip', ['link', 'set', 'x0', 'down']);
      port.writeBatch(b, idx, 0, 40);
      port.writeBatch(b, idx, 0, 40); // 80 frames for 64 chunks, none sent while down
      const down = { tx: port.txPackets, full: port.txRingFull, sendErrors: port.txSendErrors };
      execFileSync('ip', ['link', 'set', 'x0', 'up']);
      await sleep(50);
      port.writeBatch(b, idx, 0, 1); // no chunk free until this kick sends the 64 held: then it goes too
      const b2 = new PacketBatch(128);
      let seen = 0;
      for (let t = 0; t < 200 && seen < 65; t++) { await sleep(5); seen += back.fill(b2, 2, 0); }
      console.log(JSON.stringify({ n, down, tx: port.txPackets, full: port.txRingFull, seen }));
    `);
    expect(r.n).toBe(40);
    expect(r.down.tx).toBe(64);
    expect(r.down.full).toBe(16);
    expect(r.down.sendErrors).toBeGreaterThanOrEqual(1);
    expect(r.tx).toBe(65);
    expect(r.full).toBe(16); // the 16 that found no chunk while the link was down, and no more
    expect(r.seen).toBe(65); // the 64 held and the new one: none lost without a count
  });

  it('a frame longer than the interface sends is refused and counted, and the frames after it go', (ctx) => {
    needRoot(ctx, 'makes a namespace, loads an XDP program, opens AF_XDP sockets');
    needTool(ctx, 'ip', 'makes the namespace and the veth pairs');
    setUp();
    expect(sh('sh', '-c', `ip -n ${NS} link add x2 mtu 1000 type veth peer name x3 mtu 1000 && ip -n ${NS} link set x2 up && ip -n ${NS} link set x3 up`).status).toBe(0);
    const r = inNs(`
      const port = new XdpPort('x0', 64);
      const out = new XdpPort('x2', 64);
      const back = new RingPort('x3', {});
      const peer = new TapPort('x1', 1, 'afpacket');
      const b = new PacketBatch(64);
      libc().write(peer.fd, frame(0, 1200), 1200);
      for (let k = 1; k <= 10; k++) libc().write(peer.fd, frame(k, 100), 100);
      let n = 0;
      for (let t = 0; t < 200 && n < 11; t++) { await sleep(5); n += port.fill(b, 1, 0); }
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

  it('leaves no program behind: gone from the interface at close, and when the process is killed', (ctx) => {
    needRoot(ctx, 'makes a namespace, loads an XDP program, opens AF_XDP sockets');
    needTool(ctx, 'ip', 'makes the namespace and the veth pair');
    setUp();
    const r = inNs(`
      const port = new XdpPort('x0', 64);
      const on = /prog\\/xdp/.test(ipLink('x0'));
      port.close();
      const off = !/prog\\/xdp/.test(ipLink('x0'));
      // Open again on the same interface (the link was let go), then die without closing.
      const again = new XdpPort('x0', 64);
      console.log(JSON.stringify({ on, off, mode: again.mode }));
      process.kill(process.pid, 'SIGKILL');
    `, null);
    expect(r).toEqual({ on: true, off: true, mode: 'af-xdp-copy-native' });
    expect(sh('ip', '-n', NS, 'link', 'show', 'x0').stdout).not.toMatch(/xdp/);
  });

  it('a batch larger than the port was opened for takes no more than it can give back; after close, fill and send are counted no-ops, not faults (review findings)', (ctx) => {
    needRoot(ctx, 'makes a namespace, loads an XDP program, opens AF_XDP sockets');
    needTool(ctx, 'ip', 'makes the namespace and the veth pair');
    setUp();
    const r = inNs(`
      const port = new XdpPort('x0', 32, { rxFrames: 64 });
      const peer = new TapPort('x1', 1, 'afpacket');
      const b = new PacketBatch(64);
      const got = [];
      for (let round = 0; round < 4; round++) {
        for (let k = 0; k < 48; k++) libc().write(peer.fd, frame(round * 100 + k, 80), 80);
        await sleep(20);
        let n;
        while ((n = port.fill(b, 1, 0)) > 0) {
          if (n > 32) throw new Error('more than the port tracks: ' + n);
          for (let i = 0; i < n; i++) got.push(u32(b.buf, b.off[i] + 14));
        }
      }
      port.close();
      const afterFill = port.fill(b, 1, 0);
      port.writeBatch(b, Uint16Array.of(0), 0, 1);
      console.log(JSON.stringify({ got, afterFill, txErrors: port.txErrors }));
    `);
    const want: number[] = [];
    for (let round = 0; round < 4; round++) for (let k = 0; k < 48; k++) want.push(round * 100 + k);
    expect(r.got).toEqual(want); // every frame once, whole, in order: no chunk handed out twice
    expect(r.afterFill).toBe(0);
    expect(r.txErrors).toBe(1);
  });

  it('refuses what it cannot open, naming the interface and the errno; a refused open leaves nothing attached', (ctx) => {
    needRoot(ctx, 'makes a namespace, loads an XDP program, opens AF_XDP sockets');
    needTool(ctx, 'ip', 'makes the namespace and the veth pair');
    setUp();
    const r = inNs(`
      const errs = [];
      const tryOpen = (f) => { try { f(); errs.push(null); } catch (e) { errs.push(e.code + ': ' + e.message); } };
      tryOpen(() => new XdpPort('nosuch0', 64));
      tryOpen(() => new XdpPort('x0', 64, { rxFrames: 100 }));
      tryOpen(() => new XdpPort('x0', 128, { rxFrames: 64 }));
      // Another XDP program already there (a first port's): the second open is refused, the first keeps working.
      const first = new XdpPort('x0', 64);
      tryOpen(() => new XdpPort('x0', 64));
      const peer = new TapPort('x1', 1, 'afpacket');
      libc().write(peer.fd, frame(1, 64), 64);
      await sleep(20);
      const b = new PacketBatch(64);
      const n = first.fill(b, 1, 0);
      first.close();
      console.log(JSON.stringify({ errs, n, after: ipLink('x0') }));
    `);
    expect(r.errs[0]).toMatch(/^FPO_ERR_IO: afpacket nosuch0 \(io xdp\): no such interface/);
    expect(r.errs[1]).toMatch(/^FPO_ERR_USAGE: .*rxFrames must be a power of two .* not 100/);
    expect(r.errs[2]).toMatch(/^FPO_ERR_USAGE: .*a batch of 128 needs at least as many rx chunks \(64\)/);
    expect(r.errs[3]).toMatch(/^FPO_ERR_IO: afpacket x0 \(io xdp\): .* failed \(errno \d+/);
    expect(r.n).toBe(1);
    expect(r.after).not.toMatch(/prog\/xdp/);
  });
});
