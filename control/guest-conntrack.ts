/**
 * The guest's side of the conntrack hand-over (issue 19): what a service VM
 * running `fpo agent` learns from its own kernel's connection tracking, and
 * what it offers its vNIC.
 *
 *   parseConntrackEvent  one line of `conntrack -E -o id` (Debian's
 *                        conntrack-tools, which works inside a network
 *                        namespace) → a GuestConnEvent: the event, both
 *                        tuples, the TCP state, flags, timeout, counters,
 *                        and the NAT the guest applied, read off the tuples
 *                        (a reply addressed elsewhere than the original's
 *                        source is source NAT; a reply from elsewhere than
 *                        the original's destination is destination NAT).
 *   offerFor             the policy: a connection is offered once it is
 *                        established and accepted (TCP ESTABLISHED and
 *                        ASSURED; UDP ASSURED; ICMP replied), optionally only
 *                        after N packets or bytes — and the offer message
 *                        the agent sends over its channel.
 *
 * fpo's side does not trust an offer: control/ct-offer.ts checks every field
 * before anything of it reaches the datapath.
 *
 * The guest's conntrack does not export TCP sequence windows (conntrack -E
 * shows none), so an offer carries none: fpo picks the windows up from the
 * next packets each way, as Linux does for a connection met mid-stream.
 */
import { FpoError } from '../datapath/errors.js';
import { addrWords } from './ct-offer.js';

export interface CtTuple {
  src: string;
  dst: string;
  /** TCP, UDP, SCTP, DCCP, UDP-Lite. */
  sport?: number;
  dport?: number;
  /** ICMP, ICMPv6: type, code and the query's identifier. */
  type?: number;
  code?: number;
  id?: number;
  /** With accounting on (nf_conntrack_acct): this direction's packets and bytes. */
  packets?: number;
  bytes?: number;
}

export interface GuestConnEvent {
  event: 'new' | 'update' | 'destroy';
  proto: number;
  protoName: string;
  /** Seconds left (absent on some destroy lines: 0). */
  timeout: number;
  /** TCP's state as Linux names it (SYN_SENT … ESTABLISHED … TIME_WAIT, CLOSE); '' for others. */
  state: string;
  orig: CtTuple;
  reply: CtTuple;
  unreplied: boolean;
  assured: boolean;
  /** The guest's conntrack id (with -o id), else 0. */
  id: number;
  zone: number;
  mark: number;
  /** The NAT the guest applied, read off the tuples. */
  nat: { src?: { addr: string; port?: number }; dst?: { addr: string; port?: number } };
}

const PORT_PROTOS = new Set([6, 17, 33, 132, 136]);
const ICMP_PROTOS = new Set([1, 58]);
const TCP_STATES = new Set(['NONE', 'SYN_SENT', 'SYN_RECV', 'ESTABLISHED', 'FIN_WAIT', 'CLOSE_WAIT', 'LAST_ACK', 'TIME_WAIT', 'CLOSE', 'LISTEN', 'SYN_SENT2']);
const CONN_KEYS = new Set(['id', 'mark', 'zone', 'use', 'secctx', 'portid', 'labels', 'helper', 'delta-time']);
const FLAGS = new Set(['UNREPLIED', 'ASSURED', 'OFFLOAD', 'HW_OFFLOAD', 'USERSPACE', 'SEEN_REPLY']);

function bad(line: string, at: number, what: string): FpoError {
  return new FpoError('FPO_ERR_BAD_INPUT', `conntrack event, offset ${at}: ${what} (in ${JSON.stringify(line.length > 200 ? `${line.slice(0, 200)}…` : line)})`);
}

const isAddr = (s: string) => /^(\d{1,3}\.){3}\d{1,3}$/.test(s) ? s.split('.').every((x) => Number(x) <= 255) : /^[0-9a-fA-F:.]{2,45}$/.test(s) && s.includes(':');
const uint = (s: string, max: number) => (/^\d{1,10}$/.test(s) && Number(s) <= max ? Number(s) : -1);

/** One line of `conntrack -E [-o id[,timestamp]]` → the event. Throws FpoError (FPO_ERR_BAD_INPUT) naming the offset and what was expected. */
export function parseConntrackEvent(line: string): GuestConnEvent {
  // Tokens with their offsets; a timestamp in brackets ("[1796405082.121243]") may lead.
  const toks: { t: string; at: number }[] = [];
  for (const m of line.matchAll(/\S+/g)) toks.push({ t: m[0], at: m.index ?? 0 });
  let k = 0;
  if (k < toks.length && /^\[\d+\.\d+\]$/.test(toks[k].t)) k++;
  const ev = toks[k]?.t;
  const event = ev === '[NEW]' ? 'new' : ev === '[UPDATE]' ? 'update' : ev === '[DESTROY]' ? 'destroy' : null;
  if (event === null) throw bad(line, toks[k]?.at ?? 0, `expected [NEW], [UPDATE] or [DESTROY], got ${JSON.stringify(ev ?? '')}`);
  k++;
  const protoName = toks[k]?.t ?? '';
  if (!/^[a-z0-9-]{2,12}$/.test(protoName)) throw bad(line, toks[k]?.at ?? line.length, `expected a protocol name, got ${JSON.stringify(protoName)}`);
  k++;
  const proto = uint(toks[k]?.t ?? '', 255);
  if (proto < 0) throw bad(line, toks[k]?.at ?? line.length, `expected the protocol number (0..255) after ${protoName}`);
  k++;
  let timeout = 0;
  if (k < toks.length && /^\d+$/.test(toks[k].t)) {
    timeout = uint(toks[k].t, 0xffffffff);
    if (timeout < 0) throw bad(line, toks[k].at, 'timeout out of range');
    k++;
  }
  let state = '';
  if (proto === 6) {
    if (k < toks.length && TCP_STATES.has(toks[k].t)) { state = toks[k].t; k++; }
    else if (event !== 'destroy') throw bad(line, toks[k]?.at ?? line.length, `expected a TCP state (${[...TCP_STATES].join(', ')})`);
  }
  const tuples: CtTuple[] = [];
  let cur: Record<string, string> | null = null;
  let curAt = 0;
  const flags = new Set<string>();
  const conn: Record<string, string> = {};
  const tupleKeys = PORT_PROTOS.has(proto) ? ['src', 'dst', 'sport', 'dport'] : ICMP_PROTOS.has(proto) ? ['src', 'dst', 'type', 'code', 'id'] : ['src', 'dst'];
  const finish = () => {
    if (cur === null) return;
    for (const key of tupleKeys) if (cur[key] === undefined) throw bad(line, curAt, `tuple ${tuples.length + 1} has no ${key}=`);
    const t: CtTuple = { src: cur.src, dst: cur.dst };
    for (const key of ['src', 'dst']) if (!isAddr(cur[key])) throw bad(line, curAt, `tuple ${tuples.length + 1}: ${key}=${cur[key]} is not an IPv4 or IPv6 address`);
    for (const key of tupleKeys.slice(2)) {
      const v = uint(cur[key], key === 'type' || key === 'code' ? 255 : 65535);
      if (v < 0) throw bad(line, curAt, `tuple ${tuples.length + 1}: ${key}=${cur[key]} is not a number in range`);
      (t as unknown as Record<string, number>)[key] = v;
    }
    for (const key of ['packets', 'bytes']) {
      if (cur[key] === undefined) continue;
      if (!/^\d{1,20}$/.test(cur[key])) throw bad(line, curAt, `tuple ${tuples.length + 1}: ${key}=${cur[key]} is not a count`);
      (t as unknown as Record<string, number>)[key] = Number(cur[key]);
    }
    tuples.push(t);
    cur = null;
  };
  for (; k < toks.length; k++) {
    const { t, at } = toks[k];
    if (/^\[[A-Z_]+\]$/.test(t)) {
      const f = t.slice(1, -1);
      if (!FLAGS.has(f)) throw bad(line, at, `unknown flag ${t}`);
      flags.add(f);
      continue;
    }
    const eq = t.indexOf('=');
    if (eq <= 0) throw bad(line, at, `expected key=value, got ${JSON.stringify(t)}`);
    const key = t.slice(0, eq);
    const value = t.slice(eq + 1);
    if (key === 'src' && tuples.length < 2) {
      finish();
      if (tuples.length === 2) throw bad(line, at, 'a third tuple');
      cur = {};
      curAt = at;
    }
    if (cur !== null && (tupleKeys.includes(key) || key === 'packets' || key === 'bytes') && cur[key] === undefined) {
      cur[key] = value;
      continue;
    }
    finish();
    if (tuples.length < 2) throw bad(line, at, `${key}= before both tuples`);
    if (!CONN_KEYS.has(key)) throw bad(line, at, `unknown field ${key}=`);
    if (conn[key] !== undefined) throw bad(line, at, `${key}= twice`);
    conn[key] = value;
  }
  finish();
  if (tuples.length !== 2) throw bad(line, line.length, `expected the original and the reply tuple, got ${tuples.length}`);
  const num = (key: string, max: number) => {
    if (conn[key] === undefined) return 0;
    const v = uint(conn[key], max);
    if (v < 0) throw bad(line, line.indexOf(`${key}=`), `${key}=${conn[key]} is not a number in range`);
    return v;
  };
  const [orig, reply] = tuples;
  // Addresses compared as addresses (one address may be written two ways), as fpo's check does.
  const same = (a: string, b: string) => { const x = addrWords(a); const y = addrWords(b); return x !== null && y !== null ? x.words.every((w, i) => w === y.words[i]) : a === b; };
  const nat: GuestConnEvent['nat'] = {};
  if (!same(reply.dst, orig.src) || reply.dport !== orig.sport || (reply.id !== undefined && reply.id !== orig.id)) nat.src = { addr: reply.dst, ...(reply.dport !== undefined ? { port: reply.dport } : {}) };
  if (!same(reply.src, orig.dst) || reply.sport !== orig.dport) nat.dst = { addr: reply.src, ...(reply.sport !== undefined ? { port: reply.sport } : {}) };
  return {
    event, proto, protoName, timeout, state, orig, reply,
    unreplied: flags.has('UNREPLIED'), assured: flags.has('ASSURED'),
    id: num('id', 0xffffffff), zone: num('zone', 65535), mark: num('mark', 0xffffffff), nat,
  };
}

/** When the guest hands a connection over. */
export interface OffloadPolicy {
  /** Only after this many packets (both directions together; needs nf_conntrack_acct = 1 in the guest). */
  minPackets?: number;
  /** Only after this many bytes (the same). */
  minBytes?: number;
}

/** What the agent sends fpo for a connection it hands over (one JSON line on the agent channel). */
export interface CtOffer {
  type: 'ct-offer';
  /** The guest's conntrack id: fpo's answers and hand-backs name it. */
  id: number;
  proto: number;
  orig: CtTuple;
  reply: CtTuple;
  nat: GuestConnEvent['nat'];
  /** TCP's state in the guest (ESTABLISHED for an offer), else ''. */
  state: string;
  /** The guest's timeout for it, in seconds. */
  timeout: number;
  zone: number;
}

/**
 * The offer for this event under `policy`, or null with why not (for the
 * agent's log): established and accepted, and past the policy's counts.
 */
export function offerFor(ev: GuestConnEvent, policy: OffloadPolicy = {}): { offer: CtOffer | null; why: string } {
  if (ev.event === 'destroy') return { offer: null, why: 'destroyed' };
  if (ev.unreplied) return { offer: null, why: 'no reply yet' };
  if (ev.proto === 6 && (ev.state !== 'ESTABLISHED' || !ev.assured)) return { offer: null, why: `TCP ${ev.state}${ev.assured ? '' : ', not assured'}` };
  if (ev.proto === 17 && !ev.assured) return { offer: null, why: 'UDP not assured' };
  if (ev.proto !== 6 && ev.proto !== 17 && !ICMP_PROTOS.has(ev.proto)) return { offer: null, why: `protocol ${ev.protoName} is not handed over` };
  const packets = (ev.orig.packets ?? NaN) + (ev.reply.packets ?? NaN);
  const bytes = (ev.orig.bytes ?? NaN) + (ev.reply.bytes ?? NaN);
  if (policy.minPackets !== undefined && !(packets >= policy.minPackets)) return { offer: null, why: Number.isNaN(packets) ? 'no packet counts (nf_conntrack_acct off)' : `${packets} packets of ${policy.minPackets}` };
  if (policy.minBytes !== undefined && !(bytes >= policy.minBytes)) return { offer: null, why: Number.isNaN(bytes) ? 'no byte counts (nf_conntrack_acct off)' : `${bytes} bytes of ${policy.minBytes}` };
  const strip = (t: CtTuple): CtTuple => {
    const { packets: _p, bytes: _b, ...rest } = t;
    return rest;
  };
  return { offer: { type: 'ct-offer', id: ev.id, proto: ev.proto, orig: strip(ev.orig), reply: strip(ev.reply), nat: ev.nat, state: ev.state, timeout: ev.timeout, zone: ev.zone }, why: 'offered' };
}
