/**
 * Address text, for the control plane and the few datapath tables that take
 * addresses from it (tunnel endpoints, NAT ranges, conntrack offers).
 */

/** Dotted IPv4 or RFC 4291 IPv6 text → 4 or 16 bytes, or null. */
export function parseIpText(s: string): Uint8Array | null {
  if (!s.includes(':')) {
    const p = s.split('.').map((x) => (/^\d{1,3}$/.test(x) ? Number(x) : NaN));
    return p.length === 4 && p.every((x) => x >= 0 && x <= 255) ? Uint8Array.from(p) : null;
  }
  const halves = s.split('::');
  if (halves.length > 2) return null;
  const head = halves[0] ? halves[0].split(':') : [];
  const tail = halves.length === 2 && halves[1] ? halves[1].split(':') : [];
  if (halves.length === 2 && head.length + tail.length > 7) return null; // "::" stands for one group at least
  const groups = halves.length === 2 ? [...head, ...Array(8 - head.length - tail.length).fill('0'), ...tail] : head;
  if (groups.length !== 8 || !groups.every((g) => /^[0-9a-fA-F]{1,4}$/.test(g))) return null;
  const b = new Uint8Array(16);
  groups.forEach((g, i) => { const v = parseInt(g, 16); b[2 * i] = v >> 8; b[2 * i + 1] = v & 255; });
  return b;
}

