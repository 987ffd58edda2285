/**
 * VLAN tags at write time: a VM port is an access port (its guest sends and
 * takes untagged frames), an uplink a trunk (a segment with a `vlan` is that
 * VLAN there), as Open vSwitch's `tag=` and `trunks=`. The FPAG puts
 * OP_PUSH_VLAN before the outputs to uplinks of a VM's frame in such a
 * segment and OP_POP_VLAN before the outputs to VM ports of an uplink frame
 * tagged with its segment's VLAN (action-sets.ts); the tag is changed per
 * copy, as the port writes it, like encapsulation, so one flood goes tagged
 * to the uplink and untagged to the other VMs of the batch.
 *
 * A copy's tx code (Execute's txEnc, beside each tx list entry):
 *   -1                 plain (TX_PLAIN)
 *   >= 0               encapsulated: encapId * 2 + flag (encap.ts)
 *   -2                 pop (TX_POP_VLAN): the outer tag (TPID 0x8100 or
 *                      0x88a8 at byte 12) is taken out; a frame without one,
 *                      or whose tag was not captured whole, goes as it is
 *   -3 - vid           push (txPushVlan): a tag 0x8100, PCP 0, DEI 0, VID
 *                      goes in after the source MAC; a frame that already
 *                      has an 0x8100 tag with VID 0 (a VM's priority tag, the
 *                      only tag a VM port lets in) gets the VID put in that
 *                      tag instead, keeping its PCP and DEI (OVS keeps a
 *                      priority tag's PCP when it tags on an access port)
 *
 * A writer copies the first 12 bytes (the MACs) and the rest of the frame
 * vlanDelta bytes further on, then calls vlanHeader: no copy of its own, no
 * allocation.
 */

export const TX_PLAIN = -1;
export const TX_POP_VLAN = -2;

/** The tx code that pushes (or sets) VLAN `vid`. */
export function txPushVlan(vid: number): number {
  return -3 - vid;
}

/** The VID a push code carries. */
export function pushedVid(e: number): number {
  return -3 - e;
}

/**
 * What VLAN op `e` (<= -2) does to the frame of `cl` captured bytes at
 * buf[off..]: +4 (a tag goes in), -4 (the tag comes out) or 0 (same length).
 */
export function vlanDelta(buf: Uint8Array, off: number, cl: number, e: number): number {
  if (cl < 14) return 0;
  const tpid = (buf[off + 12] << 8) | buf[off + 13];
  if (e === TX_POP_VLAN) return (tpid === 0x8100 || tpid === 0x88a8) && cl >= 18 ? -4 : 0;
  return tpid === 0x8100 && cl >= 16 && ((buf[off + 14] & 0x0f) | buf[off + 15]) === 0 ? 0 : 4;
}

/**
 * After the frame's bytes were copied to dst[at..] as vlanDelta says (MACs
 * at 0, the rest at 12 + delta, or from byte 16 at 12 for a pop): writes the
 * pushed tag, or the VID into a priority tag. `cl` is the source's caplen.
 */
export function vlanHeader(dst: Uint8Array, at: number, e: number, delta: number, cl: number): void {
  if (e === TX_POP_VLAN || cl < 14) return;
  const vid = pushedVid(e);
  if (delta === 4) {
    dst[at + 12] = 0x81;
    dst[at + 13] = 0x00;
    dst[at + 14] = vid >> 8;
    dst[at + 15] = vid & 0xff;
  } else {
    dst[at + 14] = (dst[at + 14] & 0xf0) | (vid >> 8);
    dst[at + 15] = vid & 0xff;
  }
}
