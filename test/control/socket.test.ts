/**
 * The control socket's path (socket.ts): never reachable by others, not
 * even between bind and chmod; nothing but a dead socket is ever removed;
 * the default path is in a folder only we can enter.
 */
import { spawn, spawnSync } from 'node:child_process';
import { chmodSync, existsSync, lstatSync, mkdirSync, readFileSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { CLI, cleanTemp, needTool, tempDir } from '../helpers.js';
import { killAll, startService, TOPO } from './run-service.js';

afterAll(() => {
  killAll();
  cleanTemp();
});

/** The CLI run to its end with this environment (a run that starts is killed after 20 s: status -1). */
function runOnce(args: string[], env: NodeJS.ProcessEnv = process.env): { status: number; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8', timeout: 20_000, env });
  return { status: r.status ?? -1, stdout: r.stdout, stderr: r.stderr };
}

describe('the control socket is never reachable by others', () => {
  it('the socket is mode 0600 from the moment bind makes it, under umask 000 (bind held open for a look by strace)', async (ctx) => {
    needTool(ctx, 'strace', 'holds fpo run just after bind() returns, so the socket can be looked at before anything else runs');
    const dir = tempDir('umask');
    const sock = join(dir, 'ctl.sock');
    // strace delays bind's return by 3 s: during that time the socket exists, and fpo run has done nothing after bind.
    const trace = join(dir, 'strace.txt');
    const p = spawn('sh', ['-c', 'umask 000; exec strace -f -qq -o "$0" -e trace=bind -e inject=bind:delay_exit=3000000 "$@"', trace, process.execPath, CLI, 'run', '-t', TOPO, '-s', sock, '-o', dir], { stdio: 'ignore' });
    let mode = -1;
    for (let i = 0; i < 2000 && mode < 0; i++) {
      if (existsSync(sock)) mode = lstatSync(sock).mode & 0o777;
      else await new Promise((r) => setTimeout(r, 5));
    }
    // The bind that made it is the one strace held (its line is written when bind returns).
    let line = '';
    for (let i = 0; i < 200 && !/bind\(.*= 0 \(DELAYED\)/.test(line); i++) {
      await new Promise((r) => setTimeout(r, 50));
      line = existsSync(trace) ? readFileSync(trace, 'utf8') : '';
    }
    expect(line).toContain(`sun_path="${sock}"`);
    expect(mode.toString(8)).toBe('600');
    // strace's tracee is fpo run: its pid starts the line.
    process.kill(Number(/^(\d+)\s+bind/m.exec(line)![1]), 'SIGTERM');
    await new Promise((r) => p.on('exit', r));
  }, 60_000);
});

describe('an existing path is taken over only when it is a socket nothing answers on', () => {
  it('--socket naming a regular file: exit 1 naming the path, the file untouched', () => {
    const dir = tempDir('regular');
    const f = join(dir, 'important.txt');
    writeFileSync(f, 'keep me\n');
    const r = runOnce(['run', '-t', TOPO, '-s', f, '-o', dir]);
    expect(r.status).toBe(1);
    expect(r.stderr).toBe(`fpo: ${f}: exists and is a regular file; not removed — give another --socket or remove it\n`);
    expect(readFileSync(f, 'utf8')).toBe('keep me\n');
  });

  it('--socket naming a folder or a symlink: exit 1 naming the path, both left as they were', () => {
    const dir = tempDir('other');
    const d = join(dir, 'folder');
    mkdirSync(d);
    const target = join(dir, 'target');
    writeFileSync(target, 'x');
    const l = join(dir, 'link.sock');
    symlinkSync(target, l);
    const rd = runOnce(['run', '-t', TOPO, '-s', d, '-o', dir]);
    expect(rd.status).toBe(1);
    expect(rd.stderr).toMatch(new RegExp(`^fpo: ${d}: exists and is a folder; not removed`));
    const rl = runOnce(['run', '-t', TOPO, '-s', l, '-o', dir]);
    expect(rl.status).toBe(1);
    expect(rl.stderr).toMatch(new RegExp(`^fpo: ${l}: exists and is a symlink; not removed`));
    expect(statSync(d).isDirectory()).toBe(true);
    expect(lstatSync(l).isSymbolicLink()).toBe(true);
    expect(readFileSync(target, 'utf8')).toBe('x');
  });

  it('a second fpo run on a live service\'s socket: exit 1 naming the path, and the first keeps its socket and answers', async () => {
    const s = await startService();
    const ino = lstatSync(s.socket).ino;
    const dir = tempDir('second');
    const r = runOnce(['run', '-t', TOPO, '-s', s.socket, '-o', dir]);
    expect(r.status).toBe(1);
    expect(r.stderr).toBe(`fpo: ${s.socket}: a service is listening on this socket already; stop it or give another --socket\n`);
    expect(lstatSync(s.socket).ino).toBe(ino);
    expect(s.ctl('ping').status).toBe(0);
    await s.stop();
    expect(existsSync(s.socket)).toBe(false);
  }, 60_000);

  it('a socket left by a service that was killed is taken over', async () => {
    const dir = tempDir('stale');
    const sock = join(dir, 'ctl.sock');
    // A listener killed by SIGKILL leaves its socket file behind, with nothing answering on it.
    spawnSync(process.execPath, ['-e', `require('net').createServer().listen(${JSON.stringify(sock)}, () => process.kill(process.pid, 'SIGKILL'))`]);
    expect(lstatSync(sock).isSocket()).toBe(true);
    const s = await startService({ out: dir, socket: sock });
    // The old file was there from the start: wait for the service's own answer.
    let ok = false;
    for (let i = 0; i < 100 && !ok; i++) {
      ok = s.ctl('ping').status === 0;
      if (!ok) await new Promise((r) => setTimeout(r, 50));
    }
    expect(ok).toBe(true);
    await s.stop();
  }, 60_000);
});

describe('the default socket path', () => {
  const env = (tmp: string): NodeJS.ProcessEnv => {
    const e: NodeJS.ProcessEnv = { ...process.env, TMPDIR: tmp };
    delete e.XDG_RUNTIME_DIR;
    delete e.FPO_SOCKET;
    return e;
  };
  const uid = process.getuid!();

  it('without $XDG_RUNTIME_DIR it is TMP/fpo-UID/fpo.sock, the folder made 0700; fpo ctl finds it', async () => {
    const tmp = tempDir('deftmp');
    const out = join(tmp, 'out');
    const p = spawn(process.execPath, [CLI, 'run', '-t', TOPO, '-o', out], { env: env(tmp), stdio: 'ignore' });
    const sock = join(tmp, `fpo-${uid}`, 'fpo.sock');
    for (let i = 0; i < 200 && !existsSync(sock); i++) await new Promise((r) => setTimeout(r, 50));
    expect(existsSync(sock)).toBe(true);
    expect((statSync(join(tmp, `fpo-${uid}`)).mode & 0o777).toString(8)).toBe('700');
    const ping = spawnSync(process.execPath, [CLI, 'ctl', 'ping'], { env: env(tmp), encoding: 'utf8' });
    expect(ping.stdout).toMatch(/pong/);
    p.kill('SIGTERM');
    await new Promise((r) => p.on('exit', r));
  }, 60_000);

  it('with $XDG_RUNTIME_DIR it is fpo.sock there', () => {
    const xdg = tempDir('xdg');
    const r = spawnSync(process.execPath, [CLI, 'ctl', '--help'], { env: { ...env(xdg), XDG_RUNTIME_DIR: xdg }, encoding: 'utf8' });
    expect(r.stdout).toContain(`(default ${join(xdg, 'fpo.sock')})`);
  });

  it('a TMP/fpo-UID that others can enter, or a symlink, is refused with exit 1 and the folder named', () => {
    const tmp = tempDir('defbad');
    const folder = join(tmp, `fpo-${uid}`);
    mkdirSync(folder);
    chmodSync(folder, 0o777);
    const open = runOnce(['run', '-t', TOPO, '-o', join(tmp, 'out')], env(tmp));
    expect(open.status).toBe(1);
    expect(open.stderr).toBe(`fpo: ${folder}: the socket's folder has mode 777; expected 700; remove it or give --socket\n`);
    const tmp2 = tempDir('deflink');
    const elsewhere = join(tmp2, 'elsewhere');
    mkdirSync(elsewhere, { mode: 0o700 });
    symlinkSync(elsewhere, join(tmp2, `fpo-${uid}`));
    const link = runOnce(['run', '-t', TOPO, '-o', join(tmp2, 'out')], env(tmp2));
    expect(link.status).toBe(1);
    expect(link.stderr).toBe(`fpo: ${join(tmp2, `fpo-${uid}`)}: the socket's folder is a symlink; remove it or give --socket\n`);
    expect(existsSync(join(elsewhere, 'fpo.sock'))).toBe(false);
  });
});
