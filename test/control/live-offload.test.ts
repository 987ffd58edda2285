import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { existsSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { CLI, cleanTemp, needRoot, needTool, runCli, tempDir } from '../helpers.js';

// VM a on a veth whose host end is a ring port with offloads (its kernel sends 64 KiB TCP segments
// with partial checksums), VM b on a TAP, with offloads (IFF_VNET_HDR: segments pass whole both ways)
// or without (fpo cuts a's segments into MTU frames with finished checksums for it). TCP both ways,
// SHA-256 on both ends.

const A = '02:00:00:00:74:01';
const B = '02:00:00:00:74:02';
const ns = (x: string) => `fpolo-${process.pid}-${x}`;
const sh = (cmd: string) => execFileSync('sh', ['-c', cmd], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
const quiet = (cmd: string) => spawnSync('sh', ['-c', cmd], { stdio: 'ignore' });

const clean = () => quiet(`ip netns del ${ns('a')}; ip netns del ${ns('b')}; ip link del fpolo-ha`);
afterAll(() => {
  clean();
  cleanTemp();
});

/** Sends `mb` MiB from ns `from` to `toIp` in ns `to` over TCP; returns both ends' "bytes sha256". */
async function transfer(from: string, to: string, toIp: string, mb: number): Promise<{ sent: string; got: string }> {
  const server = spawn('ip', ['netns', 'exec', to, process.execPath, '-e', `
    const h = require('crypto').createHash('sha256'); let n = 0;
    const s = require('net').createServer((c) => { c.on('data', (d) => { h.update(d); n += d.length; }); c.on('end', () => { console.log(n + ' ' + h.digest('hex')); s.close(); }); });
    s.listen(5001, '${toIp}', () => console.log('ready'));`]);
  let out = '';
  server.stdout.on('data', (d) => (out += d));
  for (let i = 0; i < 100 && !out.includes('ready'); i++) await new Promise((r) => setTimeout(r, 50));
  const client = spawnSync('ip', ['netns', 'exec', from, process.execPath, '-e', `
    const b = Buffer.alloc(${mb} << 20); for (let i = 0; i < b.length; i++) b[i] = (i * 2654435761) >>> 24;
    const c = require('net').connect(5001, '${toIp}', () => c.end(b));
    c.on('close', () => console.log(b.length + ' ' + require('crypto').createHash('sha256').update(b).digest('hex')));`], { encoding: 'utf8', timeout: 60_000 });
  await new Promise((r) => server.on('exit', r));
  return { sent: client.stdout.trim(), got: out.trim().split('\n').at(-1)! };
}

describe.each([false, true])('offloads: GSO segments whole through a ring port with them to a TAP with offloads %s', (tapOffload) => {
  it('TCP a→b and b→a intact; a\'s segments arrive at fpo whole and leave to the TAP whole (TAP with offloads) or cut to its MTU (without)', async (ctx) => {
    needRoot(ctx, 'makes namespaces, a veth pair, a TAP and AF_PACKET rings');
    needTool(ctx, 'ip', 'makes the namespaces');
    const dir = tempDir('liveoffload');
    clean();
    sh(`ip netns add ${ns('a')} && ip netns add ${ns('b')}`
      + ' && ip link add fpolo-va type veth peer name fpolo-ha'
      + ` && ip link set fpolo-va netns ${ns('a')}`
      + ' && sysctl -qw net.ipv6.conf.fpolo-ha.disable_ipv6=1 && ip link set fpolo-ha up'
      + ` && ip -n ${ns('a')} link set fpolo-va address ${A} up && ip -n ${ns('a')} addr add 10.74.0.1/24 dev fpolo-va && ip -n ${ns('a')} link set lo up`);
    const topo = join(dir, 'topology.json');
    writeFileSync(topo, JSON.stringify({
      name: 'lo', segments: [{ name: 's' }],
      ports: [{ name: 'pa', ppid: 11, kind: 'afpacket', device: 'fpolo-ha', offload: true }, { name: 'pb', ppid: 12, kind: 'tap', device: 'fpolo-tb', offload: tapOffload }],
      nodes: [{ name: 'a', interfaces: [{ name: 'a0', mac: A, ip: '10.74.0.1', segment: 's', port: 'pa' }] }, { name: 'b', interfaces: [{ name: 'b0', mac: B, ip: '10.74.0.2', segment: 's', port: 'pb' }] }],
    }));
    const sock = join(dir, 'fpo.sock');
    const fpo = spawn(process.execPath, [CLI, 'run', '-t', topo, '-s', sock, '-o', join(dir, 'out')], { stdio: ['ignore', 'ignore', 'pipe'] });
    let err = '';
    fpo.stderr.on('data', (d) => (err += d));
    try {
      for (let i = 0; i < 200 && !existsSync(sock); i++) await new Promise((r) => setTimeout(r, 50));
      expect(existsSync(sock), err).toBe(true);
      sh(`ip link set fpolo-tb netns ${ns('b')} && ip -n ${ns('b')} link set fpolo-tb address ${B} up && ip -n ${ns('b')} addr add 10.74.0.2/24 dev fpolo-tb && ip -n ${ns('b')} link set lo up`);
      // (A frame flooded before the TAP was up in b fails to be written: counted, before the transfers.)
      const errors0 = JSON.parse(runCli(['ctl', '-s', sock, '--json', 'stats']).stdout).live.find((l: any) => l.port === 'pb').txErrors;
      const ab = await transfer(ns('a'), ns('b'), '10.74.0.2', 8);
      expect(ab.sent).toMatch(/^8388608 [0-9a-f]{64}$/);
      expect(ab.got).toBe(ab.sent);
      const ba = await transfer(ns('b'), ns('a'), '10.74.0.1', 8);
      expect(ba.sent).toMatch(/^8388608 [0-9a-f]{64}$/);
      expect(ba.got).toBe(ba.sent);
      const st = JSON.parse(runCli(['ctl', '-s', sock, '--json', 'stats']).stdout);
      const pa = st.ports.find((p: any) => p.name === 'pa');
      const pb = st.ports.find((p: any) => p.name === 'pb');
      const livePa = st.live.find((l: any) => l.port === 'pa');
      const livePb = st.live.find((l: any) => l.port === 'pb');
      expect(livePa.mode).toBe('tpacket-v3+vnet');
      // a's 8 MiB came in as GSO packets: far fewer than 8 MiB / 1448 bytes of payload.
      expect(pa.rxBytes / pa.rxPackets).toBeGreaterThan(1514);
      if (tapOffload) {
        // b's TAP takes segments whole: as many frames as packets; and b's kernel sent its own in segments too.
        expect(livePb.mode).toBe('read-write+vnet');
        expect(livePb.txSent).toBe(pb.txPackets - livePb.txErrors);
        expect(pb.rxBytes / pb.rxPackets).toBeGreaterThan(1514);
      } else {
        // b's TAP takes frames of its MTU: the TAP port sent more frames than fpo delivered packets to it.
        expect(livePb.mode).toBe('read-write');
        expect(livePb.txSent).toBeGreaterThan(pb.txPackets);
        expect(livePb.txSent).toBeGreaterThanOrEqual(Math.ceil((8 << 20) / 1448));
      }
      expect(livePb.txErrors).toBe(errors0); // none while the segments were cut and sent
      expect(st.packets.in).toBe(st.packets.out + st.packets.dropped);
    } finally {
      fpo.kill('SIGTERM');
      await new Promise((r) => fpo.on('exit', r));
    }
  }, 120_000);
});
