import { describe, expect, it } from 'vitest';
import { PORT_PPID_BIT } from '../../../datapath/classifier/flow-key.js';
import { MappingTable, NO_PPID } from '../../../datapath/mapping/mapping-table.js';

describe('MappingTable', () => {
  it('maps a VPID to a PPID and the port back to the VPID', () => {
    const m = new MappingTable(10, 10);
    expect(m.inPortKey[3]).toBe((PORT_PPID_BIT | 3) >>> 0);
    m.set(7, 3);
    expect(m.toPpid[7]).toBe(3);
    expect(m.toVpid[3]).toBe(7);
    expect(m.inPortKey[3]).toBe(7);
  });

  it('moving a VPID frees its old port', () => {
    const m = new MappingTable(10, 10);
    m.set(7, 3);
    m.set(7, 4);
    expect(m.toVpid[3]).toBe(-1);
    expect(m.inPortKey[3]).toBe((PORT_PPID_BIT | 3) >>> 0);
    expect(m.toVpid[4]).toBe(7);
    expect(m.changes).toBe(2);
  });

  it('giving a port to another VPID unmaps the one that had it', () => {
    const m = new MappingTable(10, 10);
    m.set(1, 5);
    m.set(2, 5);
    expect(m.toPpid[1]).toBe(NO_PPID);
    expect(m.toPpid[2]).toBe(5);
  });

  it('clear removes a mapping', () => {
    const m = new MappingTable(10, 10);
    m.set(1, 5);
    m.clear(1);
    expect(m.toPpid[1]).toBe(NO_PPID);
    expect(m.toVpid[5]).toBe(-1);
  });
});
