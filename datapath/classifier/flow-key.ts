/**
 * The flow key: the fields a flow can match, packed into KEY_WORDS 32-bit
 * words per packet so that hashing, masking and comparing are loops over a
 * Uint32Array with no objects.
 *
 *   word  bits      field
 *   0     31..0     in_port   (VPID of the receiving port, or PORT_PPID_BIT|PPID
 *                              when the port carries no VPID)
 *   1     31..16    vlan_tpid (0 when untagged; 0x8100 or 0x88a8 of the outer tag)
 *         15..0     vlan_tci  (of the outer tag; PCP, DEI, VID)
 *   2     31..0     eth_dst bytes 0..3
 *   3     31..16    eth_dst bytes 4..5
 *         15..0     eth_src bytes 0..1
 *   4     31..0     eth_src bytes 2..5
 *   5     31..16    eth_type  (after the VLAN tags)
 *         15..8     ip_proto  (also the ARP opcode's low byte)
 *         7..0      ip_frag   (FRAG_* bits below) | ip_tos<<2 is not kept
 *   6..9            ip_src    (IPv4 in word 6; IPv6 in words 6..9; ARP spa in 6)
 *   10..13          ip_dst    (IPv4 in word 10; IPv6 in words 10..13; ARP tpa in 10)
 *   14    31..16    tp_src    (TCP/UDP source port; ICMP type)
 *         15..0     tp_dst    (TCP/UDP destination port; ICMP code)
 *   15    31..0     tun_id    (VNI | TUN_PRESENT of the tunnel a decapsulated packet came
 *                              in on; 0 when it did not come through a tunnel of ours)
 *   16    31..0     tun_src   (outer IPv4 source of that tunnel packet)
 *   17    31..0     tun_dst   (outer IPv4 destination: our tunnel endpoint)
 *   18    31..24    ct_state  (CS_* bits of conntrack.ts after a ct action; 0 untracked)
 *         23..16    recirc_id (the table a ct(table=T) sent the packet to; 0 on rx)
 *         15..0     ct_zone   (the zone of that ct action)
 *
 * A field that the packet does not have is 0. A new field means a new word
 * or bits here, and a line in FIELDS: the FPAG, the classifier and the flow
 * dump all read FIELDS, so nothing else needs to learn about it.
 */

export const KEY_WORDS = 19 as const;

export const W_IN_PORT = 0;
export const W_VLAN = 1;
export const W_ETH_DST_HI = 2;
export const W_ETH_MID = 3;
export const W_ETH_SRC_LO = 4;
export const W_ETH_TYPE = 5;
export const W_IP_SRC = 6;
export const W_IP_DST = 10;
export const W_TP = 14;
export const W_TUN = 15;
export const W_TUN_SRC = 16;
export const W_TUN_DST = 17;
export const W_CT = 18;

/** Set in in_port when the port has no VPID (an uplink seen by its PPID). */
export const PORT_PPID_BIT = 0x40000000;

export const FRAG_ANY = 1; // the packet is an IP fragment
export const FRAG_LATER = 2; // ... and not the first one (no L4 header)
/** In an ARP packet's ip_frag bits (ARP has no fragments): its sender hardware address is not the frame's source MAC (port security drops it). */
export const ARP_SHA_NOT_SRC = 0x80;

export const TUN_PRESENT = 0x01000000;

/** A matchable field: where it lives in the key. Multi-word fields span `words` words from `word`. */
export interface FieldDef {
  /** First key word of the field. */
  word: number;
  /** Number of whole words (IPv6 addresses: 4; MAC addresses are special-cased by `kind`). */
  words: number;
  /** Bit shift within the word, for sub-word fields. */
  shift: number;
  /** Width in bits, for sub-word fields (32 for whole words). */
  bits: number;
  /** How a person writes the value. */
  kind: 'int' | 'mac' | 'ipv4' | 'ipv6';
}

/** Every matchable field. MAC fields are handled by kind='mac' over words 2..4. */
export const FIELDS = {
  in_port: { word: W_IN_PORT, words: 1, shift: 0, bits: 32, kind: 'int' },
  vlan_tpid: { word: W_VLAN, words: 1, shift: 16, bits: 16, kind: 'int' },
  vlan_tci: { word: W_VLAN, words: 1, shift: 0, bits: 16, kind: 'int' },
  vlan_vid: { word: W_VLAN, words: 1, shift: 0, bits: 12, kind: 'int' },
  eth_dst: { word: W_ETH_DST_HI, words: 2, shift: 0, bits: 48, kind: 'mac' },
  eth_src: { word: W_ETH_MID, words: 2, shift: 0, bits: 48, kind: 'mac' },
  eth_type: { word: W_ETH_TYPE, words: 1, shift: 16, bits: 16, kind: 'int' },
  ip_proto: { word: W_ETH_TYPE, words: 1, shift: 8, bits: 8, kind: 'int' },
  ip_frag: { word: W_ETH_TYPE, words: 1, shift: 0, bits: 8, kind: 'int' },
  ipv4_src: { word: W_IP_SRC, words: 1, shift: 0, bits: 32, kind: 'ipv4' },
  ipv4_dst: { word: W_IP_DST, words: 1, shift: 0, bits: 32, kind: 'ipv4' },
  ipv6_src: { word: W_IP_SRC, words: 4, shift: 0, bits: 128, kind: 'ipv6' },
  ipv6_dst: { word: W_IP_DST, words: 4, shift: 0, bits: 128, kind: 'ipv6' },
  tp_src: { word: W_TP, words: 1, shift: 16, bits: 16, kind: 'int' },
  tp_dst: { word: W_TP, words: 1, shift: 0, bits: 16, kind: 'int' },
  tun_id: { word: W_TUN, words: 1, shift: 0, bits: 24, kind: 'int' },
  tun_src: { word: W_TUN_SRC, words: 1, shift: 0, bits: 32, kind: 'ipv4' },
  tun_dst: { word: W_TUN_DST, words: 1, shift: 0, bits: 32, kind: 'ipv4' },
  ct_state: { word: W_CT, words: 1, shift: 24, bits: 8, kind: 'int' },
  recirc_id: { word: W_CT, words: 1, shift: 16, bits: 8, kind: 'int' },
  ct_zone: { word: W_CT, words: 1, shift: 0, bits: 16, kind: 'int' },
} as const satisfies Record<string, FieldDef>;

export type FieldName = keyof typeof FIELDS;

/** ct_state's bits by name, bit 0 first (Open vSwitch's order and values: conntrack.ts CS_*). */
export const CT_STATE_NAMES = ['new', 'est', 'rel', 'rpl', 'inv', 'trk', 'snat', 'dnat'] as const;

/**
 * Parses ct_state flags as OVS writes them: `+trk+est-new` (each flag set or
 * clear; the others not matched) → [value, mask] of the 8-bit field; or a
 * number, matched whole. Throws Error naming the part that is wrong.
 */
export function parseCtState(text: string | number, where: string): [number, number] {
  if (typeof text === 'number' || /^(0x[0-9a-f]+|\d+)$/i.test(text)) {
    const n = Number(text);
    if (!Number.isInteger(n) || n < 0 || n > 255) throw new Error(`${where}: expected ct_state flags like +trk+est or a number in 0..255, got ${JSON.stringify(text)}`);
    return [n, 0xff];
  }
  let v = 0;
  let m = 0;
  const re = /([+-])([a-z]+)/gy;
  let at = 0;
  let hit: RegExpExecArray | null;
  while ((hit = re.exec(text)) !== null) {
    const bit = CT_STATE_NAMES.indexOf(hit[2] as (typeof CT_STATE_NAMES)[number]);
    if (bit < 0) throw new Error(`${where}: unknown ct_state flag ${JSON.stringify(hit[2])}; expected ${CT_STATE_NAMES.join(', ')}`);
    if (m & (1 << bit)) throw new Error(`${where}: ct_state flag ${hit[2]} given twice`);
    m |= 1 << bit;
    if (hit[1] === '+') v |= 1 << bit;
    at = re.lastIndex;
  }
  if (at !== text.length || m === 0) throw new Error(`${where}: expected ct_state flags like +trk+est-new, got ${JSON.stringify(text)}`);
  return [v, m];
}

/** ct_state value/mask as OVS prints it: `+est+trk-new` (set flags first). */
export function formatCtState(v: number, m: number): string {
  let plus = '';
  let minus = '';
  for (let b = 0; b < 8; b++) {
    if ((m & (1 << b)) === 0) continue;
    if (v & (1 << b)) plus += `+${CT_STATE_NAMES[b]}`;
    else minus += `-${CT_STATE_NAMES[b]}`;
  }
  return plus + minus;
}
export const FIELD_NAMES = Object.keys(FIELDS) as FieldName[];

// Slow path: helpers for the control plane to build and print keys and masks.

/** Sets `field` to `value` in key and all its bits in mask (both KEY_WORDS long, at offset `at`). */
export function setField(key: Uint32Array, mask: Uint32Array, at: number, field: FieldName, value: number | bigint | Uint8Array): void {
  const f: FieldDef = FIELDS[field];
  switch (f.kind) {
    case 'mac': {
      const b = value as Uint8Array;
      if (field === 'eth_dst') {
        key[at + 2] = ((b[0] << 24) | (b[1] << 16) | (b[2] << 8) | b[3]) >>> 0;
        mask[at + 2] = 0xffffffff;
        key[at + 3] = ((key[at + 3] & 0xffff) | (b[4] << 24) | (b[5] << 16)) >>> 0;
        mask[at + 3] = (mask[at + 3] | 0xffff0000) >>> 0;
      } else {
        key[at + 3] = ((key[at + 3] & 0xffff0000) | (b[0] << 8) | b[1]) >>> 0;
        mask[at + 3] = (mask[at + 3] | 0xffff) >>> 0;
        key[at + 4] = ((b[2] << 24) | (b[3] << 16) | (b[4] << 8) | b[5]) >>> 0;
        mask[at + 4] = 0xffffffff;
      }
      return;
    }
    case 'ipv6': {
      const b = value as Uint8Array;
      for (let w = 0; w < 4; w++) {
        key[at + f.word + w] = ((b[w * 4] << 24) | (b[w * 4 + 1] << 16) | (b[w * 4 + 2] << 8) | b[w * 4 + 3]) >>> 0;
        mask[at + f.word + w] = 0xffffffff;
      }
      return;
    }
    case 'int':
    case 'ipv4': {
      const m = f.bits === 32 ? 0xffffffff : ((1 << f.bits) - 1) << f.shift;
      const v = Number(value);
      key[at + f.word] = ((key[at + f.word] & ~m) | ((v << f.shift) & m)) >>> 0;
      mask[at + f.word] = (mask[at + f.word] | m) >>> 0;
      return;
    }
    default: {
      const never: never = f.kind;
      throw new Error(`unknown field kind ${String(never)}`);
    }
  }
}

/**
 * The bits of `fields` as (word, bits) pairs, for unwildcardBits: made once
 * (at start), where a decision names its fields. unwildcard by name looks
 * the field up each time (a keyed load: ~60 ns of a flow set-up's decision,
 * measured with bench/control/upcall).
 */
export function fieldBits(...fields: FieldName[]): Uint32Array {
  const mask = new Uint32Array(KEY_WORDS);
  for (const f of fields) unwildcard(mask, f);
  const pairs: number[] = [];
  for (let w = 0; w < KEY_WORDS; w++) if (mask[w] !== 0) pairs.push(w, mask[w]);
  return Uint32Array.from(pairs);
}

// A key's 19 words written out, not looped: V8 neither unrolls nor vectorizes a loop over a typed array,
// and a set-up passes over its key several times (measured: a 19-word copy ~45 ns looped, ~25 written out).
const KEY_WORDS_WRITTEN_OUT: 19 = KEY_WORDS; // (the helpers below: one line a word; a new word, a new line)
void KEY_WORDS_WRITTEN_OUT;

/** dst[d..] = src[s..], KEY_WORDS words. */
export function copyKey(dst: Uint32Array, d: number, src: Uint32Array, s: number): void {
  dst[d + 0] = src[s + 0];
  dst[d + 1] = src[s + 1];
  dst[d + 2] = src[s + 2];
  dst[d + 3] = src[s + 3];
  dst[d + 4] = src[s + 4];
  dst[d + 5] = src[s + 5];
  dst[d + 6] = src[s + 6];
  dst[d + 7] = src[s + 7];
  dst[d + 8] = src[s + 8];
  dst[d + 9] = src[s + 9];
  dst[d + 10] = src[s + 10];
  dst[d + 11] = src[s + 11];
  dst[d + 12] = src[s + 12];
  dst[d + 13] = src[s + 13];
  dst[d + 14] = src[s + 14];
  dst[d + 15] = src[s + 15];
  dst[d + 16] = src[s + 16];
  dst[d + 17] = src[s + 17];
  dst[d + 18] = src[s + 18];
}

/** dst[d..] = 0, KEY_WORDS words. */
export function clearKey(dst: Uint32Array, d: number): void {
  dst[d + 0] = 0;
  dst[d + 1] = 0;
  dst[d + 2] = 0;
  dst[d + 3] = 0;
  dst[d + 4] = 0;
  dst[d + 5] = 0;
  dst[d + 6] = 0;
  dst[d + 7] = 0;
  dst[d + 8] = 0;
  dst[d + 9] = 0;
  dst[d + 10] = 0;
  dst[d + 11] = 0;
  dst[d + 12] = 0;
  dst[d + 13] = 0;
  dst[d + 14] = 0;
  dst[d + 15] = 0;
  dst[d + 16] = 0;
  dst[d + 17] = 0;
  dst[d + 18] = 0;
}

/** Whether a[ao..] and b[bo..] hold the same KEY_WORDS words. */
export function sameKey(a: Uint32Array, ao: number, b: Uint32Array, bo: number): boolean {
  return (
    a[ao + 0] === b[bo + 0] &&
    a[ao + 1] === b[bo + 1] &&
    a[ao + 2] === b[bo + 2] &&
    a[ao + 3] === b[bo + 3] &&
    a[ao + 4] === b[bo + 4] &&
    a[ao + 5] === b[bo + 5] &&
    a[ao + 6] === b[bo + 6] &&
    a[ao + 7] === b[bo + 7] &&
    a[ao + 8] === b[bo + 8] &&
    a[ao + 9] === b[bo + 9] &&
    a[ao + 10] === b[bo + 10] &&
    a[ao + 11] === b[bo + 11] &&
    a[ao + 12] === b[bo + 12] &&
    a[ao + 13] === b[bo + 13] &&
    a[ao + 14] === b[bo + 14] &&
    a[ao + 15] === b[bo + 15] &&
    a[ao + 16] === b[bo + 16] &&
    a[ao + 17] === b[bo + 17] &&
    a[ao + 18] === b[bo + 18]
  );
}

/** ORs into `mask` the bits fieldBits gave. */
export function unwildcardBits(mask: Uint32Array, bits: Uint32Array): void {
  for (let j = 0; j < bits.length; j += 2) mask[bits[j]] |= bits[j + 1];
}

/** ORs into `mask` every bit of `field`. */
export function unwildcard(mask: Uint32Array, field: FieldName): void {
  const f: FieldDef = FIELDS[field];
  if (f.kind === 'mac') {
    if (field === 'eth_dst') { mask[2] = 0xffffffff; mask[3] = (mask[3] | 0xffff0000) >>> 0; }
    else { mask[3] = (mask[3] | 0xffff) >>> 0; mask[4] = 0xffffffff; }
    return;
  }
  if (f.words === 4) { for (let w = 0; w < 4; w++) mask[f.word + w] = 0xffffffff; return; }
  const m = f.bits === 32 ? 0xffffffff : ((1 << f.bits) - 1) << f.shift;
  mask[f.word] = (mask[f.word] | m) >>> 0;
}

function popcount(x: number): number {
  let c = 0;
  for (let v = x >>> 0; v !== 0; v >>>= 1) c += v & 1;
  return c;
}

/** A MAC address at b[o..o+6) as one number (hi 32 bits × 65536 + lo 16): a Map key that makes no string. */
export function macNumber(b: Uint8Array, o: number): number {
  return (((b[o] << 24) | (b[o + 1] << 16) | (b[o + 2] << 8) | b[o + 3]) >>> 0) * 65536 + ((b[o + 4] << 8) | b[o + 5]);
}

export function macToString(hi: number, lo16: number): string {
  const b = [hi >>> 24, (hi >>> 16) & 255, (hi >>> 8) & 255, hi & 255, lo16 >>> 8, lo16 & 255];
  return b.map((x) => x.toString(16).padStart(2, '0')).join(':');
}

export function ipv4ToString(v: number): string {
  return `${v >>> 24}.${(v >>> 16) & 255}.${(v >>> 8) & 255}.${v & 255}`;
}

export function ipv6ToString(k: Uint32Array, word: number): string {
  const g: number[] = [];
  for (let w = 0; w < 4; w++) g.push(k[word + w] >>> 16, k[word + w] & 0xffff);
  // RFC 5952: compress the longest run (of two or more) of zero groups.
  let best = -1;
  let bestLen = 1;
  for (let i = 0; i < 8; ) {
    if (g[i] !== 0) { i++; continue; }
    let j = i;
    while (j < 8 && g[j] === 0) j++;
    if (j - i > bestLen) { best = i; bestLen = j - i; }
    i = j;
  }
  const hex = g.map((x) => x.toString(16));
  if (best < 0) return hex.join(':');
  return `${hex.slice(0, best).join(':')}::${hex.slice(best + bestLen).join(':')}`;
}

/**
 * Prints the fields that `mask` covers, as `name=value[/mask]` joined by
 * commas, in FIELDS order — the left half of a dump-flows line.
 */
export function formatMatch(key: Uint32Array, mask: Uint32Array, koff = 0, moff = 0): string {
  const out: string[] = [];
  const k = key.subarray(koff, koff + KEY_WORDS);
  const m = mask.subarray(moff, moff + KEY_WORDS);
  const ethType = k[W_ETH_TYPE] >>> 16;
  for (const name of FIELD_NAMES) {
    const f: FieldDef = FIELDS[name];
    if (name === 'vlan_vid') continue; // printed as vlan_tci
    if (f.kind === 'mac') {
      const [hiW, loW] = name === 'eth_dst' ? [2, 3] : [3, 4];
      const covered = name === 'eth_dst' ? (m[2] | (m[3] & 0xffff0000)) !== 0 : ((m[3] & 0xffff) | m[4]) !== 0;
      if (!covered) continue;
      const hi = name === 'eth_dst' ? k[hiW] : (((k[3] & 0xffff) << 16) | (k[4] >>> 16)) >>> 0;
      const lo = name === 'eth_dst' ? k[loW] >>> 16 : k[4] & 0xffff;
      out.push(`${name}=${macToString(hi, lo)}`);
      continue;
    }
    if (f.kind === 'ipv6') {
      if (ethType !== 0x86dd) continue;
      if ((m[f.word] | m[f.word + 1] | m[f.word + 2] | m[f.word + 3]) === 0) continue;
      let bits = 0;
      for (let w = 0; w < 4; w++) bits += popcount(m[f.word + w]);
      out.push(`${name}=${ipv6ToString(k, f.word)}${bits === 128 ? '' : `/${bits}`}`);
      continue;
    }
    if (f.kind === 'ipv4' && ethType === 0x86dd && f.word !== W_TUN_SRC && f.word !== W_TUN_DST) continue;
    const fm = f.bits === 32 ? 0xffffffff : ((1 << f.bits) - 1) << f.shift;
    const mm = (m[f.word] & fm) >>> 0;
    if (mm === 0) continue;
    const v = ((k[f.word] & fm) >>> 0) >>> f.shift;
    const full = mm === fm >>> 0;
    let text: string;
    if (f.kind === 'ipv4') text = ipv4ToString(v);
    else if (name === 'in_port') text = v & PORT_PPID_BIT ? `ppid:${v & ~PORT_PPID_BIT}` : `vpid:${v}`;
    else if (name === 'eth_type' || name === 'vlan_tpid') text = `0x${v.toString(16).padStart(4, '0')}`;
    else if (name === 'recirc_id' && v === 0) continue; // every flow matches it (fpag.ts): 0 is said by its absence
    else if (name === 'ct_state') { out.push(`ct_state=${formatCtState(v, mm >>> f.shift)}`); continue; }
    else text = String(v);
    out.push(full ? `${name}=${text}` : `${name}=${text}/0x${(mm >>> f.shift).toString(16)}`);
  }
  return out.length ? out.join(',') : 'any';
}
