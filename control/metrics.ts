/**
 * The Prometheus text format on an HTTP address (`fpo run --metrics ADDR`,
 * loopback by default): per-port packets and bytes, drops by reason,
 * packets in/out, flows, upcalls, migrations. Values are read from the
 * datapath's counters when scraped (prom-client's collect), so the fast
 * path does nothing for metrics.
 */
import { createServer, type Server } from 'node:http';
import { Counter, Gauge, Registry } from 'prom-client';
import type { Datapath } from '../datapath/datapath.js';
import { FpoError } from '../datapath/errors.js';
import type { Fpag } from './fpag.js';

/** Host and port from "HOST:PORT", ":PORT" or "PORT" (host 127.0.0.1). */
export function parseAddr(addr: string): { host: string; port: number } {
  const m = /^(?:\[?([^\]]*?)\]?:)?(\d{1,5})$/.exec(addr);
  const port = m ? Number(m[2]) : NaN;
  if (!m || port > 65535) throw new FpoError('FPO_ERR_USAGE', `--metrics: expected HOST:PORT or PORT, got "${addr}"`);
  return { host: m[1] || '127.0.0.1', port };
}

export function metricsRegistry(dp: Datapath, fpag: Fpag): Registry {
  const reg = new Registry();
  const portName = (ppid: number) => fpag.portOf(ppid)?.name ?? String(ppid);
  const counter = (name: string, help: string, labelNames: string[], fill: (set: (labels: Record<string, string>, v: number) => void) => void) =>
    new Counter({
      name, help, labelNames, registers: [reg],
      collect() {
        this.reset();
        fill((labels, v) => this.inc(labels, v));
      },
    });
  counter('fpo_port_rx_packets_total', 'Packets received on a port', ['port', 'ppid'], (set) => { for (const p of dp.stats().ports) set({ port: portName(p.ppid), ppid: String(p.ppid) }, p.rxPackets); });
  counter('fpo_port_rx_bytes_total', 'Bytes received on a port', ['port', 'ppid'], (set) => { for (const p of dp.stats().ports) set({ port: portName(p.ppid), ppid: String(p.ppid) }, p.rxBytes); });
  counter('fpo_port_tx_packets_total', 'Packets sent on a port (flood copies each count)', ['port', 'ppid'], (set) => { for (const p of dp.stats().ports) set({ port: portName(p.ppid), ppid: String(p.ppid) }, p.txPackets); });
  counter('fpo_port_tx_bytes_total', 'Bytes sent on a port', ['port', 'ppid'], (set) => { for (const p of dp.stats().ports) set({ port: portName(p.ppid), ppid: String(p.ppid) }, p.txBytes); });
  counter('fpo_drops_total', 'Packets dropped, by reason', ['reason'], (set) => { for (const [k, v] of Object.entries(dp.stats().drops)) set({ reason: k }, v ?? 0); });
  counter('fpo_packets_total', 'Packets by where they ended: in, out (delivered), dropped', ['kind'], (set) => {
    const st = dp.stats();
    set({ kind: 'in' }, st.packetsIn);
    set({ kind: 'out' }, st.delivered);
    set({ kind: 'dropped' }, st.dropped);
  });
  counter('fpo_upcalls_total', 'Flow-table misses sent to the FPAG', [], (set) => set({}, dp.upcalls));
  counter('fpo_migrations_total', 'Interface migrations done by mapping updates', [], (set) => set({}, fpag.migrations));
  new Gauge({ name: 'fpo_flows', help: 'Flows installed now', registers: [reg], collect() { this.set(dp.flows.count); } });
  return reg;
}

export function serveMetrics(reg: Registry, addr: string): Promise<Server> {
  const { host, port } = parseAddr(addr);
  const server = createServer((req, res) => {
    if (req.url !== '/metrics') {
      res.writeHead(404).end('fpo serves /metrics\n');
      return;
    }
    reg.metrics().then((text) => res.writeHead(200, { 'content-type': reg.contentType }).end(text), (e: Error) => res.writeHead(500).end(e.message));
  });
  return new Promise((resolve, reject) => {
    server.once('error', (e) => reject(new FpoError('FPO_ERR_IO', `--metrics ${addr}: cannot listen: ${e.message}`)));
    server.listen(port, host, () => resolve(server));
  });
}
