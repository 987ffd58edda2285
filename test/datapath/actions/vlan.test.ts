import { describe, expect, it } from 'vitest';
import { TX_POP_VLAN, pushedVid, txPushVlan, vlanDelta, vlanHeader } from '../../../datapath/actions/vlan.js';

const macs = [2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2];
const frame = (...rest: number[]) => Uint8Array.from([...macs, ...rest]);

/** What a writer does: the MACs, the rest moved by the delta, then vlanHeader. */
function write(f: Uint8Array, e: number): number[] {
  const d = vlanDelta(f, 0, f.length, e);
  const out = new Uint8Array(f.length + d);
  if (f.length < 14) out.set(f);
  else {
    out.set(f.subarray(0, 12));
    if (d < 0) out.set(f.subarray(16), 12);
    else out.set(f.subarray(12), 12 + d);
    vlanHeader(out, 0, e, d, f.length);
  }
  return [...out];
}

describe('vlan', () => {
  it('push codes carry VIDs 0..4095 and are all below the plain and pop codes', () => {
    for (const vid of [0, 1, 20, 4094, 4095]) {
      expect(pushedVid(txPushVlan(vid))).toBe(vid);
      expect(txPushVlan(vid)).toBeLessThan(TX_POP_VLAN);
    }
  });

  it('push on an untagged frame puts 0x8100, PCP 0, the VID after the source MAC', () => {
    expect(write(frame(0x08, 0x00, 0x45, 0x00), txPushVlan(20))).toEqual([...macs, 0x81, 0x00, 0x00, 0x14, 0x08, 0x00, 0x45, 0x00]);
    expect(write(frame(0x08, 0x00), txPushVlan(4094))).toEqual([...macs, 0x81, 0x00, 0x0f, 0xfe, 0x08, 0x00]);
  });

  it('push on a priority tag (VID 0) keeps its PCP and DEI and sets the VID; a tag with a VID gets another in front', () => {
    expect(write(frame(0x81, 0x00, 0xb0, 0x00, 0x08, 0x00), txPushVlan(20))).toEqual([...macs, 0x81, 0x00, 0xb0, 0x14, 0x08, 0x00]);
    expect(write(frame(0x81, 0x00, 0x00, 0x07, 0x08, 0x00), txPushVlan(20))).toEqual([...macs, 0x81, 0x00, 0x00, 0x14, 0x81, 0x00, 0x00, 0x07, 0x08, 0x00]);
  });

  it('pop takes the outer tag out (0x8100 or 0x88a8) and leaves an untagged frame or a cut tag as it is', () => {
    expect(write(frame(0x81, 0x00, 0x60, 0x14, 0x08, 0x00, 0x45), TX_POP_VLAN)).toEqual([...macs, 0x08, 0x00, 0x45]);
    expect(write(frame(0x88, 0xa8, 0x00, 0x14, 0x81, 0x00, 0x00, 0x05), TX_POP_VLAN)).toEqual([...macs, 0x81, 0x00, 0x00, 0x05]);
    expect(write(frame(0x08, 0x00, 0x45, 0x00), TX_POP_VLAN)).toEqual([...macs, 0x08, 0x00, 0x45, 0x00]);
    // 17 bytes: the tag is whole but its ethertype is cut; 18 is the least a pop takes.
    expect(vlanDelta(frame(0x81, 0x00, 0x00, 0x14, 0x08), 0, 17, TX_POP_VLAN)).toBe(0);
    expect(vlanDelta(frame(0x81, 0x00, 0x00, 0x14, 0x08, 0x00), 0, 18, TX_POP_VLAN)).toBe(-4);
  });

  it('a frame shorter than an Ethernet header is left as it is', () => {
    expect(vlanDelta(Uint8Array.from(macs), 0, 12, txPushVlan(20))).toBe(0);
    expect(write(Uint8Array.from([...macs, 0x08]), txPushVlan(20))).toEqual([...macs, 0x08]);
  });
});
