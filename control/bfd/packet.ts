/**
 * BFD control packets (RFC 5880 §4.1), encoded and decoded without throwing:
 * a packet that fails the reception checks of §6.8.6 is reported with the
 * reason it is discarded, and counted by the caller.
 *
 *   0                   1                   2                   3
 *   |Vers |  Diag   |Sta|P|F|C|A|D|M|  Detect Mult  |    Length     |
 *   |                       My Discriminator                        |
 *   |                      Your Discriminator                       |
 *   |                    Desired Min TX Interval                    |
 *   |                   Required Min RX Interval                    |
 *   |                 Required Min Echo RX Interval                 |
 *   |   Auth Type   |   Auth Len    |    Authentication Data...     |
 */

export const STATE = { AdminDown: 0, Down: 1, Init: 2, Up: 3 } as const;
export type StateName = keyof typeof STATE;
export const STATE_NAMES: StateName[] = ['AdminDown', 'Down', 'Init', 'Up'];

/** Diagnostic codes (§4.1). */
export const DIAG = {
  none: 0,
  controlDetectionTimeExpired: 1,
  echoFailed: 2,
  neighborSignaledDown: 3,
  forwardingPlaneReset: 4,
  pathDown: 5,
  concatenatedPathDown: 6,
  administrativelyDown: 7,
  reverseConcatenatedPathDown: 8,
} as const;
export const DIAG_NAMES = Object.keys(DIAG) as (keyof typeof DIAG)[];

export interface BfdPacket {
  version: number;
  diag: number;
  state: number;
  poll: boolean;
  final: boolean;
  cpi: boolean;
  auth: boolean;
  demand: boolean;
  multipoint: boolean;
  detectMult: number;
  length: number;
  myDisc: number;
  yourDisc: number;
  desiredMinTx: number;
  requiredMinRx: number;
  requiredMinEchoRx: number;
}

/** Why a received packet was discarded (§6.8.6), for the counters. */
export const DISCARD = {
  short: 'shorter than 24 bytes',
  version: 'version is not 1',
  length: 'length field below the minimum or past the payload',
  detectMult: 'detect multiplier is 0',
  multipoint: 'multipoint bit set',
  myDisc: 'my discriminator is 0',
  yourDisc: 'your discriminator 0 while the state is not Down or AdminDown',
  auth: 'authentication missing, unexpected, or failing to verify',
  ttl: 'TTL below 255 (not a single-hop peer)',
  unknownSession: 'your discriminator names no session',
} as const;
export type DiscardReason = keyof typeof DISCARD;

/** Decodes `b`; returns the packet or the reason to discard it. */
export function decode(b: Uint8Array, authConfigured = false): BfdPacket | DiscardReason {
  if (b.length < 24) return 'short';
  const version = b[0] >> 5;
  if (version !== 1) return 'version';
  const flags = b[1];
  const length = b[3];
  const auth = (flags & 0x04) !== 0;
  if (length < (auth ? 26 : 24) || length > b.length) return 'length';
  const detectMult = b[2];
  if (detectMult === 0) return 'detectMult';
  if (flags & 0x01) return 'multipoint';
  const u32 = (o: number) => ((b[o] << 24) | (b[o + 1] << 16) | (b[o + 2] << 8) | b[o + 3]) >>> 0;
  const myDisc = u32(4);
  if (myDisc === 0) return 'myDisc';
  const yourDisc = u32(8);
  const state = flags >> 6;
  if (yourDisc === 0 && state !== STATE.Down && state !== STATE.AdminDown) return 'yourDisc';
  if (auth && !authConfigured) return 'auth';
  return {
    version, diag: b[0] & 0x1f, state, poll: (flags & 0x20) !== 0, final: (flags & 0x10) !== 0, cpi: (flags & 0x08) !== 0, auth,
    demand: (flags & 0x02) !== 0, multipoint: false, detectMult, length, myDisc, yourDisc,
    desiredMinTx: u32(12), requiredMinRx: u32(16), requiredMinEchoRx: u32(20),
  };
}

/** Encodes a packet without authentication into `out` (24 bytes); returns 24. */
export function encode(p: Omit<BfdPacket, 'version' | 'length' | 'auth' | 'multipoint'>, out: Uint8Array): number {
  out[0] = (1 << 5) | (p.diag & 0x1f);
  out[1] = (p.state << 6) | (p.poll ? 0x20 : 0) | (p.final ? 0x10 : 0) | (p.cpi ? 0x08 : 0) | (p.demand ? 0x02 : 0);
  out[2] = p.detectMult;
  out[3] = 24;
  const w = (o: number, v: number) => { out[o] = v >>> 24; out[o + 1] = (v >>> 16) & 255; out[o + 2] = (v >>> 8) & 255; out[o + 3] = v & 255; };
  w(4, p.myDisc);
  w(8, p.yourDisc);
  w(12, p.desiredMinTx);
  w(16, p.requiredMinRx);
  w(20, p.requiredMinEchoRx);
  return 24;
}
