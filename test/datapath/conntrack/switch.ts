/**
 * A small switch for the ct and firewall tests: a client and a server VM
 * on one segment, each on a port that keeps what it is sent, the FPAG on
 * the datapath as fpo runs them; `send` puts frames through as one batch.
 */
import { Fpag } from '../../../control/fpag.js';
import { topologyFrom, type TopologyInput } from '../../../control/topology.js';
import { PacketBatch } from '../../../datapath/batch.js';
import { Datapath, type DatapathOptions, type TxPort } from '../../../datapath/datapath.js';
import { concat, eth, ipv4 } from '../../../fixtures/packets.js';

export const C_MAC = '02:00:00:00:00:01';
export const S_MAC = '02:00:00:00:00:02';
export const C = '10.0.0.1';
export const S = '10.0.0.2';
export const O_MAC = '02:00:00:00:00:03';
export const O = '10.0.0.3';

/** More of the switch: a third VM ("other", on port p3) and the datapath's options. */
export interface SwitchOptions {
  /** The third VM's interface fields (absent: no third VM). */
  other?: Record<string, unknown>;
  dp?: DatapathOptions;
}

/** A port that keeps a copy of every frame it is given. */
class Keep implements TxPort {
  frames: Uint8Array[] = [];
  writeBatch(batch: PacketBatch, idx: Uint16Array, from: number, n: number): void {
    for (let j = from; j < from + n; j++) {
      const i = idx[j];
      this.frames.push(batch.buf.slice(batch.off[i], batch.off[i] + batch.caplen[i]));
    }
  }
}

export type Rule = { table?: number; priority: number; match?: Record<string, string | number>; actions: string[] };

/** The two VMs with these topology rules; `extra` overrides the interfaces (a firewall, say). */
export function twoVms(rules: Rule[], client: Record<string, unknown> = {}, server: Record<string, unknown> = {}, opts: SwitchOptions = {}) {
  const topo = topologyFrom({
    ports: [{ name: 'p1', ppid: 1 }, { name: 'p2', ppid: 2 }, ...(opts.other ? [{ name: 'p3', ppid: 3 }] : [])],
    segments: [{ name: 'a' }],
    nodes: [
      { name: 'client', interfaces: [{ name: 'client', mac: C_MAC, ip: C, segment: 'a', port: 'p1', ...client }] },
      { name: 'server', interfaces: [{ name: 'server', mac: S_MAC, ip: S, segment: 'a', port: 'p2', ...server }] },
      ...(opts.other ? [{ name: 'other', interfaces: [{ name: 'other', mac: O_MAC, ip: O, segment: 'a', port: 'p3', ...opts.other }] }] : []),
    ],
    rules,
  } as TopologyInput, 'ct.json');
  const dp = new Datapath({ maxFlows: 1024, conntrackCapacity: 1024, ...opts.dp });
  const out = new Map<number, Keep>([[1, new Keep()], [2, new Keep()], ...(opts.other ? [[3, new Keep()] as [number, Keep]] : [])]);
  for (const [ppid, port] of out) dp.addPort(ppid, port);
  const fpag = new Fpag(topo, dp);
  fpag.start();
  const batch = new PacketBatch(32);
  let now = 1000;
  /** Sends frames (each [in ppid, bytes]) as one batch; returns what each port got. */
  const send = (frames: [number, Uint8Array][]) => {
    for (const p of out.values()) p.frames = [];
    const buf = concat(...frames.map(([, f]) => f));
    batch.batchSetBuffer(buf);
    batch.count = frames.length;
    let o = 0;
    frames.forEach(([ppid, f], i) => {
      batch.off[i] = o; batch.caplen[i] = f.length; batch.wirelen[i] = f.length; batch.inPpid[i] = ppid; batch.drop[i] = 0;
      o += f.length;
    });
    dp.process(batch, (now += 10));
    return { toClient: out.get(1)!.frames, toServer: out.get(2)!.frames, toOther: out.get(3)?.frames ?? [] };
  };
  return { dp, fpag, send };
}

const FLAGS: Record<string, number> = { F: 0x01, S: 0x02, R: 0x04, P: 0x08, A: 0x10 };

/** A TCP segment client:40000 ⇄ server:80 with sequence numbers. */
export function seg(from: 'c' | 's', seq: number, ack: number, flags: string, len = 0, port = 80): Uint8Array {
  const h = new Uint8Array(20);
  const dv = new DataView(h.buffer);
  dv.setUint16(0, from === 'c' ? 40000 : port);
  dv.setUint16(2, from === 'c' ? port : 40000);
  dv.setUint32(4, seq >>> 0);
  dv.setUint32(8, ack >>> 0);
  h[12] = 5 << 4;
  h[13] = [...flags].reduce((f, c) => f | FLAGS[c], 0);
  dv.setUint16(14, 65535);
  const body = concat(h, new Uint8Array(len).fill(0x61));
  return from === 'c'
    ? eth(S_MAC, C_MAC, 0x0800, ipv4({ src: C, dst: S, proto: 6 }, body))
    : eth(C_MAC, S_MAC, 0x0800, ipv4({ src: S, dst: C, proto: 6 }, body));
}


/** The connections firewall version v holds, every port's (services/firewall: a table per port). */
export function fwConns(dp: Datapath, v: 'v1' | 'v2') {
  return [...dp.firewall(v).tables()].flatMap(([z, t]) => t.list(dp.now, z));
}
