/**
 * fpo ctl (ctl.ts): a connection closed without an answer is an error at
 * once, an answer must carry the request's id, and inject reads its file on
 * the client's side (a regular file only, relative to the caller's folder).
 */
import { execFileSync, spawn } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:net';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { eth, ipv4, udp, writePcap } from '../../fixtures/packets.js';
import { CLI, FIXTURES, cleanTemp, tempDir } from '../helpers.js';
import { MAX_ANSWER } from '../../control/ctl.js';
import { killAll, startService } from './run-service.js';

afterAll(() => {
  killAll();
  cleanTemp();
});

/** The CLI as a child, without blocking this process (a fake server here must answer it); killed after 20 s (status -1). */
function cli(args: string[], cwd?: string): Promise<{ status: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const p = spawn(process.execPath, [CLI, ...args], { cwd, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    p.stdout.on('data', (d) => (stdout += d));
    p.stderr.on('data', (d) => (stderr += d));
    const t = setTimeout(() => p.kill('SIGKILL'), 20_000);
    p.on('exit', (code) => { clearTimeout(t); resolve({ status: code ?? -1, stdout, stderr }); });
  });
}

/** A stand-in for fpo run that does `onLine` with each connection's first request line. */
function fakeServer(path: string, onLine: (c: import('node:net').Socket, line: string) => void): Promise<Server> {
  return new Promise((resolve) => {
    const srv = createServer((c) => {
      let buf = '';
      c.setEncoding('utf8');
      c.on('data', (d: string) => {
        buf += d;
        const nl = buf.indexOf('\n');
        if (nl >= 0) onLine(c, buf.slice(0, nl));
      });
      c.on('error', () => undefined);
    });
    srv.listen(path, () => resolve(srv));
  });
}

describe('fpo ctl and the connection', () => {
  it('a service that closes the connection without answering is an error at once', async () => {
    const sock = join(tempDir('ctlclose'), 's');
    const srv = await fakeServer(sock, (c) => c.destroy());
    const r = await cli(['ctl', '-s', sock, 'ping']);
    srv.close();
    expect(r.status).toBe(1);
    expect(r.stderr).toBe(`fpo: ${sock}: fpo run closed the connection without answering\n`);
  }, 30_000);

  it('an answer that carries another request\'s id is refused, not taken for this one\'s', async () => {
    const sock = join(tempDir('ctlid'), 's');
    const srv = await fakeServer(sock, (c) => c.write('{"id":7,"ok":true,"result":{"pong":true}}\n'));
    const r = await cli(['ctl', '-s', sock, 'ping']);
    srv.close();
    expect(r.status).toBe(1);
    expect(r.stderr).toBe(`fpo: ${sock}: answer carries id 7, expected 1\n`);
  }, 30_000);
});

describe('fpo ctl inject reads the capture on the client\'s side', () => {
  const frame = eth('02:00:00:00:00:01', '02:ee:00:00:00:01', 0x0800, ipv4({ src: '192.0.2.1', dst: '10.0.0.1', proto: 17 }, udp(1, 9, new Uint8Array(18))));

  it('a FIFO, a folder, a missing file and an empty file are refused by ctl with the path named; the service sees nothing and keeps serving', async () => {
    const dir = tempDir('ctlbad');
    const fifo = join(dir, 'fifo.pcap');
    execFileSync('mkfifo', [fifo]);
    const folder = join(dir, 'folder.pcap');
    mkdirSync(folder);
    const empty = join(dir, 'empty.pcap');
    writeFileSync(empty, '');
    const s = await startService({ out: join(dir, 'out') });
    const cases: [string, string][] = [
      [fifo, `fpo: ${fifo}: not a regular file (a FIFO); inject takes a capture file\n`],
      [folder, `fpo: ${folder}: not a regular file (a folder); inject takes a capture file\n`],
      [join(dir, 'missing.pcap'), `fpo: ${join(dir, 'missing.pcap')}: cannot open: ENOENT: no such file or directory, open '${join(dir, 'missing.pcap')}'\n`],
      [empty, `fpo: ${empty}: empty file; inject takes a capture file\n`],
    ];
    let n = 0;
    for (const [path, msg] of cases) {
      const r = await cli(['ctl', '-s', s.socket, 'inject', path]);
      expect(r.status, path).toBe(1);
      expect(r.stderr, path).toBe(msg);
      n++;
    }
    expect(n).toBe(4);
    const st = JSON.parse((await cli(['ctl', '-s', s.socket, '--json', 'stats'])).stdout);
    // Only this stats request ever reached the service.
    expect(st.control).toMatchObject({ requests: 1, refused: 0 });
    await s.stop();
  }, 60_000);

  it('a relative path is the caller\'s, not the service\'s', async () => {
    const callers = tempDir('caller');
    writePcap(join(callers, 'rel.pcap'), Array.from({ length: 5 }, (_, i) => ({ sec: 1000, usec: i, data: frame })));
    const s = await startService({ out: join(tempDir('svcdir'), 'out') });
    const r = await cli(['ctl', '-s', s.socket, '--json', 'inject', 'rel.pcap'], callers);
    expect(r.stderr).toBe('');
    expect(JSON.parse(r.stdout)).toMatchObject({ capture: 'rel.pcap', packets: { in: 5, out: 5, dropped: 0 } });
    await s.stop();
  }, 60_000);

  it('the refusal of a file that is not a capture does not echo its bytes', async () => {
    const dir = tempDir('echo');
    const f = join(dir, 'x.pcap');
    writeFileSync(f, 'SECRET-BYTES-SECRET-BYTES-SECRET');
    const s = await startService({ out: join(dir, 'out') });
    const r = await cli(['ctl', '-s', s.socket, '--json', 'inject', f]);
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/offset 0: not a pcap or pcapng file/);
    expect(r.stdout + r.stderr).not.toMatch(/SECR|53454352|0x5345/);
    await s.stop();
  }, 60_000);
});

describe('fpo ctl against what it should not trust', () => {
  it('an answer line longer than MAX_ANSWER with no end is an error at once (a peer that sends without end does not grow ctl without end)', async () => {
    const dir = tempDir('ctl-long');
    const sock = join(dir, 'long.sock');
    const chunk = Buffer.alloc(4 << 20, 0x78);
    const srv = await fakeServer(sock, (c) => {
      let sent = 0;
      const pump = () => {
        while (sent < MAX_ANSWER + (8 << 20) && !c.destroyed) {
          sent += chunk.length;
          if (!c.write(chunk)) return void c.once('drain', pump);
        }
      };
      pump(); // then keeps the connection open
    });
    const r = await cli(['ctl', '-s', sock, 'ping']);
    srv.close();
    expect(r.status).toBe(1); // before: no limit, killed by the test after 20 s (-1)
    expect(r.stderr).toMatch(/answer longer than 524288000 characters with no end of line; not an fpo service\?/);
  }, 60_000);

  it('inject of a capture cut mid-record: what was whole goes in, the error is printed, exit 1 (as fpo replay)', async () => {
    const dir = tempDir('ctl-cut');
    const cap = join(dir, 'cut.pcap');
    const frame = eth('02:00:00:00:00:01', '02:ee:00:00:00:01', 0x0800, ipv4({ src: '192.0.2.1', dst: '10.0.0.1', proto: 17 }, udp(1000, 9, new Uint8Array(20))));
    writePcap(cap, Array.from({ length: 5 }, (_, i) => ({ sec: 1_700_000_000, usec: i, data: frame })));
    const whole = (await import('node:fs')).readFileSync(cap);
    writeFileSync(cap, whole.subarray(0, whole.length - 10));
    const s = await startService();
    const r = await cli(['ctl', '-s', s.socket, '--json', 'inject', cap]);
    expect(r.status).toBe(1); // before: 0
    expect(JSON.parse(r.stdout).packets.in).toBe(4);
    expect(r.stderr).toMatch(/^fpo: inject: .*cut|^fpo: inject: .*trunc|^fpo: inject: .*ends inside/m);
    const replayed = await cli(['replay', cap, '-t', join(FIXTURES, 'topology.json'), '-o', tempDir('ctl-cut-replay')]);
    expect(replayed.status).toBe(1);
    await s.stop();
  });
});
