/**
 * A full flow table while a batch is switched (flow-table.ts quarantine): a
 * batch's installs take spare indices, one batch's worth for each pass a
 * packet may take (the first and MAX_RECIRC recirculations). With two
 * batches' worth, three ct passes each making a flow a connection (768 new
 * flows a batch of 256 SYNs) had dropped every new connection of a batch as
 * flowTableFull once the table was full (found by a review; the same before
 * the CLOCK eviction).
 */
import { expect, it } from 'vitest';
import { Fpag } from '../../../control/fpag.js';
import { topologyFrom, type TopologyInput } from '../../../control/topology.js';
import { PacketBatch } from '../../../datapath/batch.js';
import { Datapath, type TxPort } from '../../../datapath/datapath.js';
import { concat } from '../../../fixtures/packets.js';
import { C, C_MAC, S, S_MAC, seg } from './switch.js';

it('a flood of new connections through three ct passes (a flow each a pass) into a full table: nothing dropped, every packet delivered', () => {
  const NB = 12;
  // Per destination port a rule in each table: every pass's flow is the connection's own.
  const rules = [0, 1, 2].flatMap((t) => Array.from({ length: NB * 256 }, (_, k) =>
    ({ table: t, priority: 10, match: { eth_type: '0x0800', ip_proto: 6, tp_dst: 2 + k }, actions: [t < 2 ? `ct(zone=${t + 1},table=${t + 1})` : 'normal'] })));
  const topo = topologyFrom({
    ports: [{ name: 'p1', ppid: 1 }, { name: 'p2', ppid: 2 }],
    segments: [{ name: 'a' }],
    nodes: [
      { name: 'client', interfaces: [{ name: 'client', mac: C_MAC, ip: C, segment: 'a', port: 'p1' }] },
      { name: 'server', interfaces: [{ name: 'server', mac: S_MAC, ip: S, segment: 'a', port: 'p2' }] },
    ],
    rules: [...rules, { table: 0, priority: 5, actions: ['normal'] }],
  } as TopologyInput, 'recirc-spare.json');
  const dp = new Datapath({ maxFlows: 8192, conntrackCapacity: 1 << 17 });
  let out = 0;
  const count: TxPort = { writeBatch: (_b, _idx, _from, n) => { out += n; } };
  dp.addPort(1, count);
  dp.addPort(2, count);
  new Fpag(topo, dp).start();
  const batch = new PacketBatch(256);
  let now = 1000;
  let port = 2;
  for (let b = 0; b < NB; b++) {
    const frames = Array.from({ length: 256 }, () => seg('c', 100, 0, 'S', 0, port++));
    batch.batchSetBuffer(concat(...frames));
    batch.count = 256;
    let o = 0;
    frames.forEach((f, i) => { batch.off[i] = o; batch.caplen[i] = f.length; batch.wirelen[i] = f.length; batch.inPpid[i] = 1; batch.drop[i] = 0; o += f.length; });
    dp.process(batch, (now += 10));
  }
  const s = dp.stats();
  expect(dp.flows.evicted).toBeGreaterThan(0); // the table was full
  expect(s.drops).toEqual({});
  expect(s.packetsIn).toBe(NB * 256);
  expect(s.delivered).toBe(NB * 256);
  expect(out).toBe(NB * 256);
});
