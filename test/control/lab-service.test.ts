/**
 * `fpo lab` with a service VM (issue 19): fixtures/lab-service.json under a
 * pid-unique name — a client inside, a server outside, a service VM between
 * them (ip_forward, the lab's default nftables firewall and masquerade, fpo
 * agent --conntrack). A TCP transfer through it arrives intact and
 * masqueraded, the agent hands the connection to fpo, and lab down leaves no
 * namespace, link or process. Bad lab files and state files are refused by
 * field.
 */
import { execFileSync, spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { loadLab, readLabState } from '../../control/lab.js';
import { FIXTURES, cleanTemp, needRoot, needTool, runCli, tempDir } from '../helpers.js';

const TAG = `s${process.pid % 100000}`;
const FIXTURE = JSON.parse(readFileSync(join(FIXTURES, 'lab-service.json'), 'utf8')) as Record<string, unknown>;
const children: ChildProcess[] = [];
let labFile = '';

/** A copy of the fixture with `change` applied, its folder a temp dir; the file's path. */
function labWith(change: (lab: any) => void, name = TAG): string {
  const dir = tempDir('labsvc');
  const lab = structuredClone(FIXTURE) as any;
  lab.name = name;
  lab.out = join(dir, 'lab');
  change(lab);
  const file = join(dir, 'lab.json');
  writeFileSync(file, JSON.stringify(lab));
  return file;
}

const netnsList = () => execFileSync('ip', ['netns', 'list'], { encoding: 'utf8' });
const linkList = () => execFileSync('ip', ['-o', 'link', 'show'], { encoding: 'utf8' });
const inNs = (vm: string, ...cmd: string[]) => execFileSync('ip', ['netns', 'exec', `fpo-${TAG}-${vm}`, ...cmd], { encoding: 'utf8', timeout: 30_000, stdio: ['ignore', 'pipe', 'pipe'] });
/** A process that is running (not gone, not a zombie waiting for its reaper). */
const running = (pid: number) => { try { return !/\) Z /.test(readFileSync(`/proc/${pid}/stat`, 'utf8')); } catch { return false; } };

afterAll(() => {
  for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
  if (labFile && existsSync(join(JSON.parse(readFileSync(labFile, 'utf8')).out, 'lab-state.json'))) runCli(['lab', 'down', labFile]);
  // Whatever a failed lab down left: only this test's names.
  for (const l of netnsList().split('\n')) if (l.startsWith(`fpo-${TAG}-`)) spawnSync('ip', ['netns', 'del', l.split(' ')[0]]);
  for (const l of linkList().split('\n')) { const dev = l.split(': ')[1]?.split('@')[0]; if (dev?.startsWith(`h-${TAG}-`)) spawnSync('ip', ['link', 'del', dev]); }
  cleanTemp();
});

// The server: the bytes' SHA-256 and the address the connection came from. The client: 1 MiB, a pause for the
// agent to see the connection established and hand it over, then 15 MiB more.
const SERVER_JS = `const c=require('crypto');const s=require('net').createServer((k)=>{const h=c.createHash('sha256');let b=0;k.on('data',(d)=>{h.update(d);b+=d.length});k.on('end',()=>{console.log(JSON.stringify({bytes:b,sha:h.digest('hex'),peer:k.remoteAddress}));k.end();s.close()})});s.listen(5001,'10.2.0.2',()=>console.log('ready'));`;
const CLIENT_JS = `const b=Buffer.alloc(16<<20);for(let i=0;i<b.length;i++)b[i]=(i*2654435761)>>>24;const k=require('net').connect(5001,'10.2.0.2',()=>{k.write(b.subarray(0,1<<20));setTimeout(()=>k.end(b.subarray(1<<20)),1500)});k.on('close',()=>console.log(require('crypto').createHash('sha256').update(b).digest('hex')));`;

describe('fpo lab with a service VM: firewall and NAT between two segments, its connections handed to fpo', () => {
  it('a TCP transfer from the client reaches the server through the service VM, masqueraded; the agent hands it over; lab down leaves nothing behind', async (ctx) => {
    needRoot(ctx, 'the lab makes namespaces, veth pairs and nftables rules');
    for (const t of ['ip', 'nft', 'conntrack', 'ping']) needTool(ctx, t, 'the service VM lab uses it');
    labFile = labWith(() => {});
    const dir = JSON.parse(readFileSync(labFile, 'utf8')).out as string;
    const sock = join(dir, 'fpo.sock');
    const stats = () => JSON.parse(runCli(['ctl', '-s', sock, '--json', 'conntrack', 'stats']).stdout);
    const up = runCli(['lab', 'up', labFile]);
    expect(up.stderr).toBe('');
    expect(up.status).toBe(0);
    const state = JSON.parse(readFileSync(join(dir, 'lab-state.json'), 'utf8')) as { pid: number; agents: { pid: number; service: string }[] };
    expect(state.agents.map((a) => a.service)).toEqual(['fw']);
    const pids = [state.pid, state.agents[0].pid];
    let conntrackE: number[] = [];
    try {
      // The service VM as the lab made it: forwarding on, its two interfaces, the default ruleset.
      expect(inNs('fw', 'sysctl', '-n', 'net.ipv4.ip_forward').trim()).toBe('1');
      expect(inNs('fw', 'ip', '-br', 'addr')).toMatch(new RegExp(`${TAG}-fwi@\\S+\\s+UP\\s+10\\.1\\.0\\.1/24[\\s\\S]*${TAG}-fwo@\\S+\\s+UP\\s+10\\.2\\.0\\.1/24`));
      const rules = inNs('fw', 'nft', 'list', 'ruleset');
      expect(rules).toMatch(/policy drop/);
      expect(rules).toMatch(new RegExp(`oifname "${TAG}-fwo" counter packets \\d+ bytes \\d+ masquerade`));
      expect(inNs('cli', 'ip', 'route', 'show', 'default')).toMatch(/default via 10\.1\.0\.1/);
      // fpo connects to the agent.
      for (let i = 0; i < 100 && stats().serviceVms?.[0]?.connected !== true; i++) await new Promise((r) => setTimeout(r, 100));
      const before = stats();
      expect(before.serviceVms[0]).toMatchObject({ node: 'fw', zone: 5, agent: join(dir, 'agent-fw.sock'), connected: true });
      // The agent's conntrack -E (its process group): gone after lab down too.
      conntrackE = spawnSync('pgrep', ['-g', String(state.agents[0].pid)], { encoding: 'utf8' }).stdout.split('\n').filter(Boolean).map(Number).filter((p) => p !== state.agents[0].pid);
      expect(conntrackE.length).toBeGreaterThan(0);

      inNs('cli', 'ping', '-c', '2', '-i', '0.2', '-W', '2', '10.2.0.2'); // ARP everywhere, flows installed
      const server = spawn('ip', ['netns', 'exec', `fpo-${TAG}-srv`, process.execPath, '-e', SERVER_JS], { stdio: ['ignore', 'pipe', 'inherit'] });
      children.push(server);
      let out = '';
      server.stdout!.setEncoding('utf8');
      server.stdout!.on('data', (d: string) => { out += d; });
      for (let i = 0; i < 100 && !out.includes('ready'); i++) await new Promise((r) => setTimeout(r, 50));
      const sent = inNs('cli', process.execPath, '-e', CLIENT_JS).trim();
      await new Promise<void>((resolve) => (server.exitCode !== null ? resolve() : server.on('exit', () => resolve())));
      const got = JSON.parse(out.split('\n').find((l) => l.startsWith('{'))!) as { bytes: number; sha: string; peer: string };
      expect(got.bytes).toBe(16 << 20);
      expect(got.sha).toBe(sent);
      expect(got.peer).toBe('10.2.0.1'); // the service VM's outside address: masqueraded
      // The connection was adopted by fpo and its segments served there, not in the VM.
      const after = stats();
      expect(after.serviceVms[0].adopted).toBeGreaterThan(before.serviceVms[0].adopted);
      expect(after.offload.served - before.offload.served).toBeGreaterThan(50);
      // Nothing new from the outside in: the firewall's policy.
      expect(spawnSync('ip', ['netns', 'exec', `fpo-${TAG}-srv`, 'ping', '-c', '1', '-W', '1', '10.1.0.2']).status).not.toBe(0);
    } finally {
      const down = runCli(['lab', 'down', labFile]);
      expect(down.stderr).toBe('');
      expect(down.status).toBe(0);
    }
    expect(netnsList()).not.toMatch(new RegExp(`fpo-${TAG}-`));
    expect(linkList()).not.toMatch(new RegExp(`${TAG}-`));
    for (const pid of [...pids, ...conntrackE]) expect(running(pid), `pid ${pid}`).toBe(false);
    expect(existsSync(join(dir, 'lab-state.json'))).toBe(false);
    expect(existsSync(join(dir, 'agent-fw.sock'))).toBe(false);
  }, 60_000);

  it('a bad service is refused naming the field and what was expected', () => {
    const refused = (change: (lab: any) => void) => { try { loadLab(labWith(change)); return ''; } catch (e) { return (e as Error).message; } };
    expect(refused((l) => { l.services[0].inside.segment = 'green'; })).toMatch(/lab\.json: services\[0\]\.inside\.segment: no segment named "green"$/);
    expect(refused((l) => { delete l.services[0].zone; })).toMatch(/lab\.json: services\[0\]\.zone: Invalid input: expected an integer in 0\.\.65535, received undefined$/);
    expect(refused((l) => { l.services[0].name = 'firewl'; })).toMatch(/services\[0\]\.name: expected 1 to 5 lowercase letters or digits/);
    expect(refused((l) => { l.services[0].outside.mac = '02:00:00:00:0A:02'; })).toMatch(/services\[0\]\.outside\.mac: expected a lowercase MAC address/);
    expect(refused((l) => { l.services[0].name = 'cli'; })).toMatch(/services\[0\]\.name: "cli" is already a VM's name/);
    expect(refused((l) => { l.vms[1].name = 'fwo'; })).toMatch(/services\[0\]\.name: its outside port would be named "fwo", already VM "fwo"'s/);
    expect(refused((l) => { l.services[0].nftables = 'no-such.nft'; })).toMatch(/services\[0\]\.nftables: expected a file with an nftables ruleset, no file at \/.*\/no-such\.nft$/);
    expect(refused((l) => { l.services[0].handover = 'yes'; })).toMatch(/services\[0\]\.handover: Invalid input: expected boolean, received string$/);
    expect(refused((l) => { l.vms[0].gateway = '10.1.0.1/24'; })).toMatch(/vms\[0\]\.gateway: expected an IPv4 address/);
    expect(refused((l) => { l.services.push({ ...l.services[0], name: 'fw2' }); })).toMatch(/services\[1\]\.zone: zone 5 is already service "fw"'s/);
    // Through the CLI: the same words, exit 1, nothing made.
    const r = runCli(['lab', 'up', labWith((l) => { l.services[0].zone = -1; }, 'sbad')]);
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/lab\.json: services\[0\]\.zone: Invalid input: expected an integer in 0\.\.65535, got -1\n$/);
  });

  it('lab down signals only the lab\'s own agent: a state file naming another socket is refused, a pid that runs something else is not signalled', async (ctx) => {
    needTool(ctx, 'ip', 'lab down lists the namespaces');
    const file = labWith(() => {}, 'sfake');
    const lab = loadLab(file);
    const other = spawn('sleep', ['30']);
    children.push(other);
    const stateFile = join(tempDir('labsvc-state'), 'lab-state.json');
    const base = { netns: [], socket: '/s', topology: '/t' };
    writeFileSync(stateFile, JSON.stringify({ ...base, agents: [{ service: 'fw', pid: other.pid, socket: '/run/elsewhere.sock' }] }));
    expect(() => readLabState(stateFile, lab)).toThrow(`${stateFile}: agents[0].socket: expected "${join(lab.dir, 'agent-fw.sock')}", got "/run/elsewhere.sock"; nothing was signalled or removed`);
    writeFileSync(stateFile, JSON.stringify({ ...base, agents: [{ service: 'fw', pid: 1, socket: join(lab.dir, 'agent-fw.sock') }] }));
    expect(() => readLabState(stateFile, lab)).toThrow(`${stateFile}: agents[0].pid: expected a process id (an integer in 2..4194304), got 1`);
    writeFileSync(stateFile, JSON.stringify({ ...base, agents: [{ service: 'vpn', pid: other.pid, socket: join(lab.dir, 'agent-fw.sock') }] }));
    expect(() => readLabState(stateFile, lab)).toThrow(`${stateFile}: agents[0].service: "vpn" is not a service VM of lab sfake with the hand-over on`);
    // The lab's own socket, but the pid runs sleep: lab down says so and leaves it alone.
    execFileSync('mkdir', ['-p', lab.dir]);
    writeFileSync(join(lab.dir, 'lab-state.json'), JSON.stringify({ ...base, agents: [{ service: 'fw', pid: other.pid, socket: join(lab.dir, 'agent-fw.sock') }] }));
    const r = runCli(['lab', 'down', file]);
    expect(r.stderr).toBe(`fpo: lab down: pid ${other.pid} is not lab sfake's agent of service VM fw (it runs: sleep 30); not signalled\n`);
    expect(r.status).toBe(0);
    await new Promise((res) => setTimeout(res, 300));
    expect(other.exitCode === null && other.signalCode === null).toBe(true);
    other.kill('SIGKILL');
  });
});
