import { spawn, spawnSync } from 'node:child_process';
import { existsSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { SLOT } from '../../../datapath/ports/tap-port.js';
import { ROOT, needRoot, needTool, runCli, tempDir, cleanTemp } from '../../helpers.js';

// A live port reads a frame into a slot of SLOT bytes. A VM whose MTU is larger
// can send a longer frame: the read cuts it, and a cut frame must not leave fpo.

const dir = tempDir('tapbig');
const LAB = join(dir, 'lab.json');
writeFileSync(LAB, JSON.stringify({
  name: 'tapbig', out: join(dir, 'run'), ports: 'tap', // the TAP port's slot is what this test is about
  segments: [{ name: 's' }],
  vms: [
    { name: 'a', segment: 's', ip: '10.71.0.1/24', mac: '02:00:00:00:71:01' },
    { name: 'b', segment: 's', ip: '10.71.0.2/24', mac: '02:00:00:00:71:02' },
  ],
  spares: [],
}));
const DIST = join(ROOT, 'dist', 'datapath', 'ports');

afterAll(() => {
  if (existsSync(join(dir, 'run', 'lab-state.json'))) runCli(['lab', 'down', LAB]);
  cleanTemp();
});

const inNs = (vm: string, ...cmd: string[]) => spawnSync('ip', ['netns', 'exec', `fpo-tapbig-${vm}`, ...cmd], { encoding: 'utf8', timeout: 30_000 });

describe('TapPort', () => {
  it(`a frame longer than the ${SLOT}-byte slot is dropped as frameTooBig, never forwarded cut; shorter ones pass whole`, async (ctx) => {
    needRoot(ctx, 'the lab makes namespaces and TAP devices');
    needTool(ctx, 'ip', 'creates the namespaces');
    const up = runCli(['lab', 'up', LAB]);
    expect(up.stderr).toBe('');
    expect(up.status).toBe(0);
    for (const vm of ['a', 'b']) expect(inNs(vm, 'ip', 'link', 'set', `tapbig-${vm}`, 'mtu', '9000').status).toBe(0);
    // b listens on its interface (AF_PACKET through fpo's own port class) and prints the length of every 0x88b5 frame.
    const listener = spawn('ip', ['netns', 'exec', 'fpo-tapbig-b', process.execPath, '--input-type=module', '-e', `
      import { TapPort } from ${JSON.stringify(join(DIST, 'tap-port.js'))};
      import { PacketBatch } from ${JSON.stringify(join(ROOT, 'dist', 'datapath', 'batch.js'))};
      const p = new TapPort('tapbig-b', 64, 'afpacket');
      const b = new PacketBatch(64);
      console.log('ready');
      const end = Date.now() + 3000;
      const seen = [];
      while (Date.now() < end) {
        const n = p.fill(b, 1, 0);
        for (let i = 0; i < n; i++) if (b.buf[b.off[i] + 12] === 0x88 && b.buf[b.off[i] + 13] === 0xb5) seen.push(b.caplen[i]);
        if (n === 0) await new Promise((r) => setTimeout(r, 5));
      }
      console.log(JSON.stringify(seen));`]);
    let heard = '';
    listener.stdout.on('data', (d) => (heard += d));
    for (let i = 0; i < 100 && !heard.includes('ready'); i++) await new Promise((r) => setTimeout(r, 50));
    expect(heard).toContain('ready');
    // a sends broadcasts of 1000, SLOT - 1, SLOT and 5000 bytes (ethertype 0x88b5, local experimental).
    const sizes = [1000, SLOT - 1, SLOT, 5000];
    const send = inNs('a', process.execPath, '--input-type=module', '-e', `
      import { TapPort } from ${JSON.stringify(join(DIST, 'tap-port.js'))};
      import { libc } from ${JSON.stringify(join(DIST, 'libc.js'))};
      const p = new TapPort('tapbig-a', 1, 'afpacket');
      for (const len of ${JSON.stringify(sizes)}) {
        const f = Buffer.alloc(len, 0x5a);
        f.fill(0xff, 0, 6); Buffer.from([2, 0, 0, 0, 0x71, 1, 0x88, 0xb5]).copy(f, 6);
        const w = libc().write(p.fd, f, len);
        if (w !== len) throw new Error('write ' + len + ' gave ' + w);
      }
      console.log('sent');`);
    expect(send.stderr).toBe('');
    expect(send.stdout.trim()).toBe('sent');
    await new Promise((r) => listener.on('exit', r));
    const lens = JSON.parse(heard.trim().split('\n').at(-1)!) as number[];
    expect(lens).toEqual([1000, SLOT - 1]); // whole, and nothing cut
    const stats = runCli(['ctl', '-s', join(dir, 'run', 'fpo.sock'), '--json', 'stats']);
    expect(stats.status).toBe(0);
    const st = JSON.parse(stats.stdout);
    expect(st.drops.frameTooBig).toBe(2); // SLOT and 5000
    expect(st.packets.in).toBe(st.packets.out + st.packets.dropped);
    expect(runCli(['lab', 'down', LAB]).status).toBe(0);
  }, 60_000);
});
