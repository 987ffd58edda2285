/**
 * fpo's side of the conntrack hand-over (issue 19): an offer from a guest's
 * agent (control/guest-conntrack.ts makes them) is checked field by field
 * before any of it reaches the datapath — the channel is the guest's, and a
 * guest writes what it likes — and turned into the two tuples ConnTrack
 * adopts (datapath/conntrack/conntrack.ts: adopt).
 *
 * An offer is refused, naming the field and what was expected, when it is
 * not an object of exactly the known fields; when an address is not one
 * address of the same family as the other three; when a port, type, code,
 * identifier, zone or timeout is out of range; when a TCP offer is not
 * ESTABLISHED; when its `nat` is not what its tuples say (the translation is
 * read off the tuples, as the agent does: a reply to elsewhere than the
 * original's source is source NAT, from elsewhere than its destination,
 * destination NAT). A refused offer changes nothing.
 */
import { FpoError } from '../datapath/errors.js';
import { addrWords } from '../datapath/conntrack/nat.js';
import type { CtOffer, CtTuple } from './guest-conntrack.js';

export { addrWords };

/** Protocols an offer may carry: TCP, UDP, ICMP, ICMPv6. */
const PROTOS = new Set([6, 17, 1, 58]);
/** The longest timeout an offer may ask for, in seconds (Linux's TCP established default, 5 days). */
export const OFFER_MAX_TIMEOUT = 432_000;

function refuse(field: string, what: string): FpoError {
  return new FpoError('FPO_ERR_BAD_INPUT', `ct-offer${field === '' ? '' : `.${field}`}: ${what}`);
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function onlyKeys(o: Record<string, unknown>, field: string, allowed: readonly string[], required: readonly string[]): void {
  for (const k of Object.keys(o)) if (!allowed.includes(k)) throw refuse(field === '' ? '' : field, `unknown field ${JSON.stringify(k.length > 40 ? `${k.slice(0, 40)}…` : k)} (expected ${allowed.join(', ')})`);
  for (const k of required) if (!Object.hasOwn(o, k)) throw refuse(field === '' ? k : `${field}.${k}`, 'missing');
}

function int(v: unknown, field: string, min: number, max: number): number {
  if (typeof v !== 'number' || !Number.isInteger(v) || v < min || v > max) throw refuse(field, `expected an integer in ${min}..${max}, got ${JSON.stringify(v)?.slice(0, 40)}`);
  return v;
}

/** The checked offer and its tuples as ConnTrack's words (zone|proto|family, src ×4, dst ×4, ports or ICMP id|type). */
export interface CheckedOffer {
  offer: CtOffer;
  orig: Uint32Array;
  reply: Uint32Array;
}

/** Who sent the offer: the guest's port's conntrack zone (its connections, and only they, live there). */
export interface OfferFrom {
  zone: number;
}

/** An address no connection of a guest's has at either end: unspecified, broadcast, multicast. */
function notAnEndpoint(w: Uint32Array, family: 4 | 6): boolean {
  if (family === 4) return w[0] === 0 || w[0] === 0xffffffff || w[0] >>> 28 === 0xe;
  return (w[0] | w[1] | w[2] | w[3]) === 0 || w[0] >>> 24 === 0xff;
}

/**
 * Checks an offer (parsed JSON from the agent channel of the guest `from`).
 * Throws FpoError naming the field; returns it with its tuple words. The
 * offer's zone must be the guest's own: a guest offers connections of the
 * traffic that passes through it, which its port's flows track in its zone,
 * and cannot put a connection into another VM's.
 */
export function checkOffer(v: unknown, from: OfferFrom): CheckedOffer {
  if (!isObject(v)) throw refuse('', 'expected an object');
  onlyKeys(v, '', ['type', 'id', 'proto', 'orig', 'reply', 'nat', 'state', 'timeout', 'zone'], ['type', 'id', 'proto', 'orig', 'reply', 'nat', 'state', 'timeout', 'zone']);
  if (v.type !== 'ct-offer') throw refuse('type', 'expected "ct-offer"');
  const id = int(v.id, 'id', 0, 0xffffffff);
  const proto = int(v.proto, 'proto', 0, 255);
  if (!PROTOS.has(proto)) throw refuse('proto', `expected 6 (TCP), 17 (UDP), 1 (ICMP) or 58 (ICMPv6), got ${proto}`);
  const icmp = proto === 1 || proto === 58;
  if (typeof v.state !== 'string') throw refuse('state', 'expected a string');
  if (proto === 6 ? v.state !== 'ESTABLISHED' : v.state !== '') throw refuse('state', proto === 6 ? `a TCP connection is handed over ESTABLISHED, not ${JSON.stringify(v.state.slice(0, 20))}` : 'expected "" for a protocol without states');
  const timeout = int(v.timeout, 'timeout', 1, OFFER_MAX_TIMEOUT);
  const zone = int(v.zone, 'zone', 0, 65535);
  if (zone !== from.zone || Object.is(v.zone, -0)) throw refuse('zone', `this guest's connections are in zone ${from.zone}`);
  let family: 4 | 6 | 0 = 0;
  const tuple = (t: unknown, field: string): { tuple: CtTuple; words: Uint32Array } => {
    if (!isObject(t)) throw refuse(field, 'expected an object');
    const keys = icmp ? ['src', 'dst', 'type', 'code', 'id'] : ['src', 'dst', 'sport', 'dport'];
    onlyKeys(t, field, keys, keys);
    const words = new Uint32Array(10);
    for (const [k, at] of [['src', 1], ['dst', 5]] as const) {
      const s = t[k];
      const a = typeof s === 'string' ? addrWords(s) : null;
      if (a === null) throw refuse(`${field}.${k}`, 'expected an IPv4 or IPv6 address');
      if (family === 0) family = a.family;
      if (a.family !== family) throw refuse(`${field}.${k}`, `an IPv${a.family} address where the offer's others are IPv${family}`);
      if (notAnEndpoint(a.words, a.family)) throw refuse(`${field}.${k}`, 'an unspecified, broadcast or multicast address is no connection\'s end');
      words.set(a.words, at);
    }
    if (icmp !== (family === 6 ? proto === 58 : proto === 1)) throw refuse('proto', `${proto === 1 ? 'ICMP' : 'ICMPv6'} over IPv${family}`);
    const out: CtTuple = { src: t.src as string, dst: t.dst as string };
    if (icmp) {
      out.type = int(t.type, `${field}.type`, 0, 255);
      out.code = int(t.code, `${field}.code`, 0, 255);
      out.id = int(t.id, `${field}.id`, 0, 65535);
      words[9] = ((out.id << 16) | (out.type << 8)) >>> 0;
    } else {
      out.sport = int(t.sport, `${field}.sport`, 1, 65535);
      out.dport = int(t.dport, `${field}.dport`, 1, 65535);
      words[9] = ((out.sport << 16) | out.dport) >>> 0;
    }
    words[0] = ((zone << 16) | (proto << 8) | (family as number)) >>> 0;
    return { tuple: out, words };
  };
  const o = tuple(v.orig, 'orig');
  const r = tuple(v.reply, 'reply');
  if (icmp && (o.tuple.code !== 0 || r.tuple.code !== 0)) throw refuse('reply.code', 'an ICMP query and its reply have code 0');
  if (o.words.every((w, i) => w === r.words[i])) throw refuse('reply', 'the same tuple as orig: a connection\'s two directions differ');
  const queries: Record<number, number> = proto === 1 ? { 8: 0, 13: 14, 15: 16, 17: 18 } : { 128: 129 };
  if (icmp && queries[o.tuple.type!] !== r.tuple.type) throw refuse('reply.type', `a reply to ICMP type ${o.tuple.type} is type ${queries[o.tuple.type!] ?? '(none: not a query)'}`);
  // nat: exactly what the tuples say (an ICMP query's identifier remapped is source NAT too).
  const want: CtOffer['nat'] = {};
  if (icmp && o.tuple.id !== r.tuple.id && sameAddr(r.tuple.dst, o.tuple.src)) want.src = { addr: r.tuple.dst };
  if (!sameAddr(r.tuple.dst, o.tuple.src) || r.tuple.dport !== o.tuple.sport) want.src = { addr: r.tuple.dst, ...(r.tuple.dport !== undefined ? { port: r.tuple.dport } : {}) };
  if (!sameAddr(r.tuple.src, o.tuple.dst) || r.tuple.sport !== o.tuple.dport) want.dst = { addr: r.tuple.src, ...(r.tuple.sport !== undefined ? { port: r.tuple.sport } : {}) };
  if (!isObject(v.nat)) throw refuse('nat', 'expected an object');
  onlyKeys(v.nat, 'nat', ['src', 'dst'], []);
  for (const side of ['src', 'dst'] as const) {
    const got = v.nat[side];
    const exp = want[side];
    if (got === undefined && exp === undefined) continue;
    if (isObject(got)) {
      onlyKeys(got, `nat.${side}`, ['addr', 'port'], ['addr']);
      if (typeof got.addr !== 'string') throw refuse(`nat.${side}.addr`, 'expected an address');
    }
    if (got === undefined || exp === undefined || !isObject(got) || JSON.stringify(normalize(got)) !== JSON.stringify(normalize(exp))) {
      throw refuse(`nat.${side}`, exp === undefined ? 'the tuples say no translation here' : `the tuples say ${JSON.stringify(exp)}`);
    }
  }
  return {
    offer: { type: 'ct-offer', id, proto, orig: o.tuple, reply: r.tuple, nat: want, state: v.state, timeout, zone },
    orig: o.words,
    reply: r.words,
  };
}

function sameAddr(a: string | undefined, b: string | undefined): boolean {
  if (a === undefined || b === undefined) return false;
  const x = addrWords(a);
  const y = addrWords(b);
  return x !== null && y !== null && x.family === y.family && x.words.every((w, i) => w === y.words[i]);
}

function normalize(n: Record<string, unknown>): Record<string, unknown> {
  const a = typeof n.addr === 'string' ? addrWords(n.addr) : null;
  return { addr: a === null ? n.addr : [...a.words], port: n.port };
}
