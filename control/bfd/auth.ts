/**
 * BFD authentication (RFC 5880 §6.7): simple password, keyed MD5 and keyed
 * SHA1, each keyed or meticulous. The section follows the 24-byte packet:
 *
 *   simple:  type=1 | len=3+n | key id | password (1..16)
 *   MD5:     type=2/3 | len=24 | key id | 0 | sequence (4) | digest (16)
 *   SHA1:    type=4/5 | len=28 | key id | 0 | sequence (4) | hash (20)
 *
 * The digest is over the whole packet with the key (zero-padded to 16 or 20
 * bytes) in the digest field. Receivers keep the last sequence number: a
 * meticulous one must grow by at least 1, a keyed one must be within
 * 3 × detect multiplier of it (§6.7.3, §6.7.4). The session forgets it
 * (forgetReceived: bfd.AuthSeqKnown = 0) after twice the detection time
 * without a packet that verified (§6.8.1), so a peer that restarted with a
 * new sequence number is taken again; it used to be kept for ever, and a
 * restarted peer never came back Up.
 */
import { createHash } from 'node:crypto';

export type AuthType = 'simple' | 'md5' | 'meticulous-md5' | 'sha1' | 'meticulous-sha1';
const CODE: Record<AuthType, number> = { simple: 1, md5: 2, 'meticulous-md5': 3, sha1: 4, 'meticulous-sha1': 5 };

export interface AuthConfig {
  type: AuthType;
  keyId: number;
  key: string;
}

export class Auth {
  private xmitSeq = Math.floor(Math.random() * 0xffffffff) >>> 0;
  private rcvSeq: number | null = null;
  private readonly key: Buffer;
  readonly code: number;

  constructor(readonly cfg: AuthConfig) {
    this.code = CODE[cfg.type];
    this.key = Buffer.from(cfg.key, 'utf8');
    const max = cfg.type === 'simple' ? 16 : cfg.type.endsWith('md5') ? 16 : 20;
    if (this.key.length < 1 || this.key.length > max) throw new Error(`auth key: 1 to ${max} bytes for ${cfg.type}`);
  }

  /** bfd.AuthSeqKnown (§6.8.1): a received sequence number is being checked against. */
  get seqKnown(): boolean {
    return this.rcvSeq !== null;
  }

  /** bfd.AuthSeqKnown = 0: the next packet that verifies sets the sequence afresh. */
  forgetReceived(): void {
    this.rcvSeq = null;
  }

  /** Section length in bytes. */
  get length(): number {
    return this.cfg.type === 'simple' ? 3 + this.key.length : this.cfg.type.endsWith('md5') ? 24 : 28;
  }

  /** Appends the section to the 24-byte packet in out[0..24) (A bit and length set here); returns the total length. */
  sign(out: Uint8Array): number {
    const len = 24 + this.length;
    out[1] |= 0x04;
    out[3] = len;
    out[24] = this.code;
    out[25] = this.length;
    out[26] = this.cfg.keyId;
    if (this.cfg.type === 'simple') {
      out.set(this.key, 27);
      return len;
    }
    // Meticulous: a new number every packet; keyed: may stay (we advance it every packet too).
    this.xmitSeq = (this.xmitSeq + 1) >>> 0;
    out[27] = 0;
    out[28] = this.xmitSeq >>> 24; out[29] = (this.xmitSeq >>> 16) & 255; out[30] = (this.xmitSeq >>> 8) & 255; out[31] = this.xmitSeq & 255;
    const dl = this.cfg.type.endsWith('md5') ? 16 : 20;
    out.fill(0, 32, 32 + dl);
    out.set(this.key, 32);
    const h = createHash(dl === 16 ? 'md5' : 'sha1').update(out.subarray(0, len)).digest();
    out.set(h, 32);
    return len;
  }

  /** Checks a received packet's section (b is the whole packet); updates the sequence state when it passes. */
  verify(b: Uint8Array, detectMult: number): boolean {
    const len = b[3];
    if (len < 27 || b[24] !== this.code || b[26] !== this.cfg.keyId || 24 + b[25] !== len) return false;
    if (this.cfg.type === 'simple') return b[25] === 3 + this.key.length && Buffer.from(b.subarray(27, len)).equals(this.key);
    const dl = this.cfg.type.endsWith('md5') ? 16 : 20;
    if (b[25] !== 8 + dl) return false;
    const seq = ((b[28] << 24) | (b[29] << 16) | (b[30] << 8) | b[31]) >>> 0;
    const copy = Buffer.from(b.subarray(0, len));
    const got = Buffer.from(copy.subarray(32, 32 + dl));
    copy.fill(0, 32, 32 + dl);
    copy.set(this.key, 32);
    const want = createHash(dl === 16 ? 'md5' : 'sha1').update(copy).digest();
    if (!want.equals(got)) return false;
    if (this.rcvSeq !== null) {
      const meticulous = this.cfg.type.startsWith('meticulous');
      const ahead = (seq - this.rcvSeq) >>> 0;
      const window = 3 * detectMult;
      if (meticulous ? ahead === 0 || ahead > window : ahead > window && ahead !== 0) return false;
    }
    this.rcvSeq = seq;
    return true;
  }
}
