/**
 * fpo ctl — talks to a running `fpo run` over its control socket: one JSON
 * request, one JSON answer. Plain tables by default, `--json` for scripts.
 *
 * The answer must carry the request's id; a connection that closes before
 * it comes is an error at once (not a wait for the timeout). `inject FILE`
 * opens FILE here, with the caller's rights and folder — a regular file
 * only, so a FIFO or a folder is refused before anything is sent — and
 * streams its bytes after the request line (service.ts: inject's body).
 */
import { closeSync, constants, createReadStream, fstatSync, openSync } from 'node:fs';
import { connect } from 'node:net';
import { parseArgs } from 'node:util';
import { FpoError } from '../datapath/errors.js';
import { COMMANDS, defaultSocket } from './socket.js';

const HELP: Record<string, string> = {
  show: 'fpo ctl show                       ports with PPIDs, interfaces with VPIDs and mappings, hosts, segments, rules',
  'dump-flows': 'fpo ctl dump-flows                 installed flows: match, actions (VPIDs), counters',
  stats: 'fpo ctl stats                      per port, per flow and drops by reason',
  'add-flow': 'fpo ctl add-flow FLOW              add a rule, e.g. "priority=100,tcp,tp_dst=23,actions=drop"',
  'del-flow': 'fpo ctl del-flow MATCH             remove the rules with this match (and priority=, if given)',
  'set-mapping': 'fpo ctl set-mapping VPID PPID      point a VPID at a port',
  migrate: 'fpo ctl migrate IFACE --to PORT [--new-vpid N] | --away\n                                   move an interface to another port (or off this host) by mapping updates',
  trace: 'fpo ctl trace PACKET               what the switch does with a packet, e.g. "in_port=uplink0,eth_dst=02:00:00:00:00:01,tcp,tp_dst=80"',
  inject: 'fpo ctl inject CAPTURE [--port P]  replay a capture into a port of the running switch (read here, sent over the socket)',
  ping: 'fpo ctl ping                       is the service there?',
  bfd: 'fpo ctl bfd                        tunnel monitor: BFD sessions (state, intervals, last change and why) and VM liveness',
  conntrack: 'fpo ctl conntrack list|stats|flush [--port P] [--zone Z]\n                                   the connection table: each connection with its owner (guest: a ct action tracks it;\n                                   vnic: a service VM handed it over, offloaded), state, NAT, counters; flush of a zone or port',
  firewall: 'fpo ctl firewall status | upgrade --to VERSION [--ports P,…] [--max-pause MS] [--restart] | upgrade --resume\n                                   the per-port firewall: each port\'s version and connections; an upgrade (or downgrade)\n                                   port by port, the state moved (hold, save, restore, switch, release), each pause shown;\n                                   --restart switches without the state (connections die: for comparison)',
  'dirty-log': 'fpo ctl dirty-log start|stop|read-and-clear|status PORT\n                                   a vf port\'s guest memory: the pages its DMA wrote, logged by the PF driver while on;\n                                   read-and-clear prints them as ranges of 4 KiB pages and clears them',
  'migrate-vm': 'fpo ctl migrate-vm IFACE --to HOST:PORT --dest-port PORT [--remote HOST] [--no-vf-log]\n                                   live-migrate the VM on a vf port to the fpo host listening there: pre-copy rounds of the\n                                   CPU-side and VF-side dirty logs, stop-and-copy, resumed on its vf port there',
  attach: 'fpo ctl attach IFACE --port PORT [--mac MAC --segment SEG [--ip IP]]\n                                   (fpo run --etcd) a VM interface runs on this port now: one etcd transaction makes it this\n                                   host\'s (moved from another host, or new: give its MAC and segment); its VPID is the one\n                                   etcd keeps for it (claimed for a new one); every host re-points its tunnel',
  capture: 'fpo ctl capture PORT [--filter EXPR] [-w FILE] [-c COUNT]\n                                   watch a port live, as tcpdump: frames it receives (In) and sends (Out, after the actions);\n                                   EXPR is a tcpdump filter (applied in fpo run); -w writes pcapng, else a line a frame; Ctrl-C ends',
};

export const CTL_HELP = `Usage: fpo ctl [--socket PATH] [--json] COMMAND [ARGS]

Commands:
${COMMANDS.map((c) => `  ${HELP[c]}`).join('\n')}

Options:
  -s, --socket PATH   the service's control socket (default ${defaultSocket()})
      --json          print the answer as JSON
  -h, --help          this text; 'fpo ctl COMMAND --help' for one command
`;

export class CtlUsage extends FpoError {
  constructor(msg: string) {
    super('FPO_ERR_USAGE', msg);
  }
}

/** A capture opened for inject: a regular file, its descriptor and size. */
interface Upload { fd: number; size: number; path: string; /** Set once a read stream owns the descriptor (and closes it). */ streaming?: boolean }

/** Opens FILE for inject on the client's side: a non-empty regular file, or an error naming it (never its bytes). */
function openUpload(path: string): Upload {
  let fd = -1;
  try {
    // Non-blocking, so that a FIFO does not wait here for a writer.
    fd = openSync(path, constants.O_RDONLY | constants.O_NONBLOCK);
    const st = fstatSync(fd);
    if (!st.isFile()) throw new CtlFileError(`${path}: not a regular file (${st.isDirectory() ? 'a folder' : st.isFIFO() ? 'a FIFO' : 'a device or socket'}); inject takes a capture file`, path);
    if (st.size === 0) throw new CtlFileError(`${path}: empty file; inject takes a capture file`, path);
    return { fd, size: st.size, path };
  } catch (e) {
    if (fd >= 0) closeSync(fd);
    if (e instanceof FpoError) throw e;
    throw new CtlFileError(`${path}: cannot open: ${(e as Error).message}`, path);
  }
}

class CtlFileError extends FpoError {
  constructor(msg: string, path: string) {
    super('FPO_ERR_IO', msg, { path });
  }
}

type Answer = { id?: unknown; ok: boolean; result?: unknown; error?: { code: string; message: string } };

/**
 * One request and its answer. With an upload, the file's bytes follow the
 * request line (exactly `bytes` of them, as the line says); an answer that
 * comes before they are all sent (a refusal) stops the upload.
 */
/** The longest answer line ctl takes (V8's strings end near 2^29 characters; a dump of a million flows is ~200 M). */
export const MAX_ANSWER = 500 * 1024 * 1024;

function request(socket: string, cmd: string, args: Record<string, unknown>, upload?: Upload, timeoutMs = 120_000): Promise<Answer> {
  const id = 1;
  return new Promise((resolve, reject) => {
    const c = connect(socket);
    let buf = '';
    let settled = false;
    const finish = (f: () => void) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      file?.destroy();
      c.destroy();
      f();
    };
    let file: ReturnType<typeof createReadStream> | null = null;
    const timer = setTimeout(() => finish(() => reject(new FpoError('FPO_ERR_IO', `${socket}: no answer in ${timeoutMs / 1000} s`, { path: socket }))), timeoutMs);
    c.setEncoding('utf8');
    c.on('connect', () => {
      c.write(JSON.stringify({ id, cmd, args }) + '\n');
      if (!upload) return;
      let sent = 0;
      file = createReadStream('', { fd: upload.fd, start: 0, end: upload.size - 1, autoClose: true, highWaterMark: 256 * 1024 });
      upload.streaming = true;
      file.on('data', (d) => { sent += d.length; });
      file.on('end', () => {
        // The file shrank while it was sent: the service would wait for bytes that never come.
        if (sent < upload.size) finish(() => reject(new FpoError('FPO_ERR_IO', `${upload.path}: shrank from ${upload.size} to ${sent} bytes while being sent`, { path: upload.path })));
      });
      file.on('error', (e) => finish(() => reject(new FpoError('FPO_ERR_IO', `${upload.path}: cannot read: ${e.message}`, { path: upload.path }))));
      file.pipe(c, { end: false });
    });
    c.on('data', (d: string) => {
      // Only the new chunk is searched (a service trickling a long answer costs one pass over it), and an
      // answer is bounded: a peer that sends without end must not grow this process without end.
      const inChunk = d.indexOf('\n');
      const nl = inChunk < 0 ? -1 : buf.length + inChunk;
      buf += d;
      if (nl < 0) {
        if (buf.length > MAX_ANSWER) finish(() => reject(new FpoError('FPO_ERR_IO', `${socket}: answer longer than ${MAX_ANSWER} characters with no end of line; not an fpo service?`, { path: socket })));
        return;
      }
      let answer: Answer;
      try {
        answer = JSON.parse(buf.slice(0, nl)) as Answer;
      } catch (e) {
        finish(() => reject(new FpoError('FPO_ERR_IO', `${socket}: answer is not JSON: ${(e as Error).message}`, { path: socket })));
        return;
      }
      // id null: the service refused the connection or the line as a whole (too many clients, too long).
      if (answer.id !== id && !(answer.id === null && answer.ok === false)) {
        finish(() => reject(new FpoError('FPO_ERR_IO', `${socket}: answer carries id ${JSON.stringify(answer.id)}, expected ${id}`, { path: socket })));
        return;
      }
      finish(() => resolve(answer));
    });
    c.on('close', () => finish(() => reject(new FpoError('FPO_ERR_IO', `${socket}: fpo run closed the connection without answering`, { path: socket }))));
    c.on('error', (e) => finish(() => reject(new FpoError('FPO_ERR_IO', `${socket}: cannot reach fpo run: ${e.message}`, { path: socket }))));
  });
}

function table(rows: string[][]): string {
  if (rows.length === 0) return '';
  const w = rows[0].map((_, c) => Math.max(...rows.map((r) => (r[c] ?? '').length)));
  return rows.map((r) => r.map((x, c) => (x ?? '').padEnd(w[c])).join('  ').trimEnd()).join('\n');
}

function plain(cmd: string, result: unknown): string {
  const r = result as Record<string, any>;
  switch (cmd) {
    case 'show':
      return [
        'ports:', table([['name', 'ppid', 'role', 'vpid', 'attached'], ...r.ports.map((p: any) => [p.name, String(p.ppid), p.role, p.vpid >= 0 ? String(p.vpid) : '-', p.attached ?? '-'])]),
        '', 'interfaces:', table([['name', 'node', 'mac', 'segment', 'vpid', 'ppid', 'port'], ...r.interfaces.map((i: any) => [i.name, i.node, i.mac, i.segment, String(i.vpid), i.ppid >= 0 ? String(i.ppid) : '-', i.port ?? '-'])]),
        '', 'segments:', table([['name', 'vlan', 'vni'], ...r.segments.map((s: any) => [s.name, s.vlan === undefined ? '-' : String(s.vlan), s.vni === undefined ? '-' : String(s.vni)])]),
        '', 'hosts:', table([['name', 'vtep'], ...r.hosts.map((h: any) => [h.name, h.vtep ?? '-'])]),
        '', 'rules:', ...(r.rules.length ? r.rules.map((x: string) => `  ${x}`) : ['  (none)']),
      ].join('\n');
    case 'dump-flows':
      return (result as any[]).map((f) => `${f.match}, packets:${f.packets}, bytes:${f.bytes}, used:${f.usedSecondsAgo.toFixed(3)}s, actions:${f.actions}`).join('\n') || '(no flows)';
    case 'stats': {
      const out = [`packets: in ${r.packets.in} = out ${r.packets.out} + dropped ${r.packets.dropped} (copies ${r.packets.copies}, special ${r.packets.special})`, ''];
      out.push(table([['port', 'ppid', 'vpid', 'rx pkts', 'rx bytes', 'tx pkts', 'tx bytes'], ...r.ports.map((p: any) => [p.name, String(p.ppid), p.vpid >= 0 ? String(p.vpid) : '-', String(p.rxPackets), String(p.rxBytes), String(p.txPackets), String(p.txBytes)])]));
      if (r.live?.length) out.push('', table([['live port', 'device', 'mode', 'rx missed', 'tx ring full', 'tx errors'], ...r.live.map((l: any) => [l.port, l.device, l.mode, String(l.rxMissed), String(l.txRingFull), String(l.txErrors)])]));
      if (r.vf?.length) out.push('', table([['vf port', 'written', 'no descriptor', 'not ready', 'paused', 'too long', 'bad buffer', 'bad queue', 'guest'], ...r.vf.map((v: any) => [v.port, String(v.written), String(v.noDescriptor), String(v.notReady), String(v.paused), String(v.tooLong), String(v.badBuffer), String(v.badQueue), v.guest ? 'running' : '-'])]));
      out.push('', 'drops:', ...(Object.keys(r.drops).length ? Object.entries(r.drops).map(([k, v]) => `  ${k}: ${v}`) : ['  none']));
      out.push('', `flows: ${r.flows.active} active, ${r.flows.installed} installed, ${r.flows.upcalls} upcalls; migrations ${r.migrations}, flow rewrites ${r.flowRewrites}`);
      for (const f of r.perFlow) out.push(`  ${f.match}, packets:${f.packets}, bytes:${f.bytes}, actions:${f.actions}`);
      return out.join('\n');
    }
    case 'conntrack':
      if (Array.isArray(r.connections)) {
        if (r.connections.length === 0) return '(no connections)';
        return table([['id', 'zone', 'proto', 'orig', 'reply', 'owner', 'state', 'nat', 'packets', 'bytes', 'expires'],
          ...r.connections.map((c: any) => [String(c.id), String(c.zone), String(c.proto), `${c.orig.src}:${c.orig.sport} > ${c.orig.dst}:${c.orig.dport}`, `${c.reply.src}:${c.reply.sport} > ${c.reply.dst}:${c.reply.dport}`,
            c.owner === 'vnic' ? (c.offloaded ? 'vnic (offloaded)' : 'vnic') : 'guest', c.state, c.nat, `${c.packets[0]}/${c.packets[1]}`, `${c.bytes[0]}/${c.bytes[1]}`, `${(c.expiresInMs / 1000).toFixed(0)}s`])]);
      }
      if (r.flushed !== undefined) return `flushed ${r.flushed} connections (zone ${r.zone}); ${r.handedBack} handed back to their service VMs`;
      return JSON.stringify(result, null, 1);
    case 'dirty-log': {
      const head = `${r.port}: ${r.pages} pages (${r.memoryFile}), logging ${r.logging ? 'on' : 'off'}; VF wrote ${r.vf.completed} (no descriptor ${r.vf.rxNoDescriptor}, queue not ready ${r.vf.rxNotReady}); PF inspections ${r.pf.inspections}, writes seen ${r.pf.writesSeen}`;
      if (r.dirty === undefined) return `${head}; dirty now ${r.dirtyNow}`;
      return `${head}\ndirty pages (${r.dirtyPages}, now cleared): ${r.dirty.map((x: [number, number]) => (x[0] === x[1] ? String(x[0]) : `${x[0]}-${x[1]}`)).join(' ') || 'none'}`;
    }
    case 'firewall': {
      const out = [table([['interface', 'zone', 'version', 'connections', 'holding'], ...r.ports.map((p: any) => [p.interface, String(p.zone), p.version, String(p.connections), p.holding ? 'yes' : 'no'])])];
      const u = r.upgrade;
      if (u.state !== 'idle') {
        out.push('', `upgrade to ${u.to}${u.restart ? ' (restart: state dropped)' : ''}: ${u.state}; pause limit ${u.maxPauseMs} ms`);
        out.push(table([['interface', 'from', 'to', 'state', 'pause ms', 'connections', 'held', 'error'], ...u.ports.map((p: any) => [p.interface, p.from, p.to, p.state, p.pauseMs === undefined ? '-' : p.pauseMs.toFixed(2), String(p.connections ?? '-'), String(p.held ?? '-'), p.error ?? ''])]));
      }
      out.push('', `hold queue: ${r.hold.now} now, ${r.hold.held} held, ${r.hold.released} released, ${r.hold.overflow} dropped (full)`);
      return out.join('\n');
    }
    case 'trace':
      return [...r.steps.map((s: string, i: number) => `${i + 1}. ${s}`)].join('\n');
    case 'bfd':
      return r.sessions.length === 0 ? '(no tunnel monitor sessions)' : table([['interface', 'peer', 'state', 'remote', 'diag', 'tx ms', 'rx ms', 'mult', 'vm', 'last change'],
        ...r.sessions.map((x: any) => [x.interface, x.peer, x.session.state, x.session.remoteState, x.session.diag, String(x.session.txUs / 1000), String(x.session.rxUs / 1000), String(x.session.detectMult), x.vmAlive ? 'alive' : 'silent', `${x.session.lastChange.from}->${x.session.lastChange.to}: ${x.session.lastChange.why}`])]);
    default:
      return JSON.stringify(result, null, 1);
  }
}

/** Runs `fpo ctl ARGV`; returns the exit code. */
export async function ctlMain(argv: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args: argv, allowPositionals: true, strict: true,
    options: { zone: { type: 'string' }, socket: { type: 'string', short: 's' }, json: { type: 'boolean' }, help: { type: 'boolean', short: 'h' }, to: { type: 'string' }, 'new-vpid': { type: 'string' }, away: { type: 'boolean' }, port: { type: 'string' }, filter: { type: 'string' }, write: { type: 'string', short: 'w' }, count: { type: 'string', short: 'c' }, ports: { type: 'string' }, 'max-pause': { type: 'string' }, resume: { type: 'boolean' }, restart: { type: 'boolean' }, 'dest-port': { type: 'string' }, 'no-vf-log': { type: 'boolean' }, remote: { type: 'string' }, mac: { type: 'string' }, segment: { type: 'string' }, ip: { type: 'string' } },
  });
  const [cmd, ...rest] = positionals;
  if (cmd === undefined) {
    process.stdout.write(CTL_HELP);
    return values.help ? 0 : 2;
  }
  if (!COMMANDS.includes(cmd)) throw new CtlUsage(`ctl: unknown command "${cmd}"; expected one of ${COMMANDS.join(', ')}`);
  if (values.help) {
    process.stdout.write(`Usage: ${HELP[cmd]}\n`);
    return 0;
  }
  const need = (n: number, what: string) => { if (rest.length !== n) throw new CtlUsage(`ctl ${cmd}: expected ${what}; see 'fpo ctl ${cmd} --help'`); };
  let args: Record<string, unknown> = {};
  switch (cmd) {
    case 'add-flow': case 'del-flow': need(1, 'one FLOW argument'); args = { flow: rest[0] }; break;
    case 'trace': need(1, 'one PACKET argument'); args = { packet: rest[0] }; break;
    case 'inject': need(1, 'one CAPTURE argument'); break;
    case 'capture': {
      need(1, 'one PORT argument');
      const n = values.count === undefined ? undefined : Number(values.count);
      if (n !== undefined && (!/^\d+$/.test(values.count!) || !Number.isSafeInteger(n))) throw new CtlUsage(`ctl capture: -c: expected a whole number of frames, got "${values.count}"`);
      const { captureMain } = await import('./ctl-capture.js');
      return captureMain({ socket: values.socket ?? defaultSocket(), port: rest[0], filter: values.filter, count: n, write: values.write, json: values.json });
    }
    case 'set-mapping': {
      need(2, 'VPID and PPID');
      const [v, p] = rest.map(Number);
      if (!Number.isInteger(v) || !Number.isInteger(p)) throw new CtlUsage(`ctl set-mapping: VPID and PPID must be integers, got "${rest[0]}" "${rest[1]}"`);
      args = { vpid: v, ppid: p };
      break;
    }
    case 'migrate': {
      need(1, 'one INTERFACE argument');
      if (!values.away && values.to === undefined) throw new CtlUsage('ctl migrate: --to PORT or --away is required');
      const nv = values['new-vpid'] === undefined ? undefined : Number(values['new-vpid']);
      if (nv !== undefined && !Number.isInteger(nv)) throw new CtlUsage(`ctl migrate: --new-vpid: expected an integer, got "${values['new-vpid']}"`);
      args = { interface: rest[0], to: values.to, away: values.away === true, newVpid: nv };
      break;
    }
    case 'migrate-vm': {
      need(1, 'one INTERFACE argument');
      if (values.to === undefined || values['dest-port'] === undefined) throw new CtlUsage('ctl migrate-vm: --to HOST:PORT and --dest-port PORT are required');
      args = { interface: rest[0], to: values.to, destPort: values['dest-port'], ...(values['no-vf-log'] ? { vfLog: false } : {}), ...(values.remote !== undefined ? { remote: values.remote } : {}) };
      break;
    }
    case 'attach': {
      need(1, 'one INTERFACE argument');
      if (values.port === undefined) throw new CtlUsage('ctl attach: --port PORT is required');
      args = { interface: rest[0], port: values.port, ...(values.mac !== undefined ? { mac: values.mac } : {}), ...(values.segment !== undefined ? { segment: values.segment } : {}), ...(values.ip !== undefined ? { ip: values.ip } : {}) };
      break;
    }
    case 'dirty-log': {
      need(2, 'an action (start, stop, read-and-clear, status) and a vf PORT');
      if (!['start', 'stop', 'read-and-clear', 'status'].includes(rest[0])) throw new CtlUsage(`ctl dirty-log: expected start, stop, read-and-clear or status, got "${rest[0]}"`);
      args = { action: rest[0], port: rest[1] };
      break;
    }
    case 'firewall': {
      need(1, 'status or upgrade');
      if (rest[0] !== 'status' && rest[0] !== 'upgrade') throw new CtlUsage(`ctl firewall: expected status or upgrade, got "${rest[0]}"`);
      if (rest[0] === 'status') { args = { action: 'status' }; break; }
      if (!values.resume && values.to === undefined) throw new CtlUsage('ctl firewall upgrade: --to VERSION or --resume is required');
      const mp = values['max-pause'] === undefined ? undefined : Number(values['max-pause']);
      if (mp !== undefined && !(mp > 0)) throw new CtlUsage(`ctl firewall upgrade: --max-pause: expected ms (> 0), got "${values['max-pause']}"`);
      args = {
        action: 'upgrade', ...(values.to !== undefined ? { to: values.to } : {}), ...(values.ports !== undefined ? { ports: values.ports.split(',').filter((p) => p !== '') } : {}),
        ...(mp !== undefined ? { maxPauseMs: mp } : {}), ...(values.resume ? { resume: true } : {}), ...(values.restart ? { restart: true } : {}),
      };
      break;
    }
    case 'conntrack': {
      need(1, 'list, stats or flush');
      if (!['list', 'stats', 'flush'].includes(rest[0])) throw new CtlUsage(`ctl conntrack: expected list, stats or flush, got "${rest[0]}"`);
      const z = values.zone === undefined ? undefined : Number(values.zone);
      if (z !== undefined && (!/^\d+$/.test(values.zone!) || z > 65535)) throw new CtlUsage(`ctl conntrack: --zone: expected an integer in 0..65535, got "${values.zone}"`);
      args = { action: rest[0], ...(values.port !== undefined ? { port: values.port } : {}), ...(z !== undefined ? { zone: z } : {}) };
      break;
    }
    default: need(0, 'no arguments');
  }
  const socket = values.socket ?? defaultSocket();
  let upload: Upload | undefined;
  if (cmd === 'inject') {
    // Opened here, with the caller's rights and relative to the caller's folder.
    upload = openUpload(rest[0]);
    args = { bytes: upload.size, name: rest[0], port: values.port };
  }
  let answer: Answer;
  try {
    answer = await request(socket, cmd, args, upload);
  } finally {
    if (upload && !upload.streaming) closeSync(upload.fd); // else the read stream closes it (at its end, or when destroyed)
  }
  if (!answer.ok) {
    if (values.json) process.stdout.write(JSON.stringify(answer) + '\n');
    process.stderr.write(`fpo: ${cmd}: ${answer.error?.message ?? 'failed'}\n`);
    return 1;
  }
  process.stdout.write((values.json ? JSON.stringify(answer.result) : plain(cmd, answer.result)) + '\n');
  // An inject whose capture turned out bad (cut short, a record past the limit) went in as far as it was good,
  // and says so; the exit status says so too, as fpo replay's does for the same file.
  const err = cmd === 'inject' ? (answer.result as { error?: { message?: string } } | null)?.error : undefined;
  if (err) {
    process.stderr.write(`fpo: inject: ${err.message ?? 'the capture is not valid'}\n`);
    return 1;
  }
  return 0;
}
