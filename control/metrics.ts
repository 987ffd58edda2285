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

/** A live port's own counters, as the service reports them (live-port.ts). */
export interface LiveCounters { port: string; ppid: number; mode: string; rxMissed: number; txRingFull: number; txErrors: number }

/** The etcd directory as this host sees it (fpo run --etcd), or null without one. */
export interface DirectoryCounters { connected: boolean; revision: number; changesApplied: number; hosts: number; interfaces: number; remoteInterfaces: number; refused: number; registrations: number; movedAway: number }

export function metricsRegistry(dp: Datapath, fpag: Fpag, live: () => LiveCounters[] = () => [], directory: () => DirectoryCounters | null = () => null): Registry {
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
  counter('fpo_port_rx_missed_total', 'Frames the kernel dropped at a live port before fpo read them (a full rx ring: rx_missed)', ['port', 'ppid', 'mode'], (set) => { for (const l of live()) set({ port: l.port, ppid: String(l.ppid), mode: l.mode }, l.rxMissed); });
  counter('fpo_port_tx_dropped_total', 'Frames a live port could not send (tx ring full, or refused by the kernel)', ['port', 'ppid', 'mode', 'why'], (set) => {
    for (const l of live()) {
      set({ port: l.port, ppid: String(l.ppid), mode: l.mode, why: 'ring-full' }, l.txRingFull);
      set({ port: l.port, ppid: String(l.ppid), mode: l.mode, why: 'error' }, l.txErrors);
    }
  });
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
  // The per-port firewall's versions and its upgrade (control/firewall-upgrade.ts).
  const fwGauge = (name: string, help: string, labelNames: string[], fill: (set: (labels: Record<string, string>, v: number) => void) => void) =>
    new Gauge({ name, help, labelNames, registers: [reg], collect() { this.reset(); fill((l, v) => this.set(l, v)); } });
  fwGauge('fpo_firewall_port_version', 'The firewall version serving a firewalled interface (1 for the version it is on)', ['interface', 'version'], (set) => {
    for (const p of fpag.firewalledPorts()) set({ interface: p.name, version: dp.firewallVersionOf(p.zone) }, 1);
  });
  fwGauge('fpo_firewall_connections', 'Connections the firewall tracks for an interface', ['interface'], (set) => {
    for (const p of fpag.firewallUpgrade.portsNow()) set({ interface: p.interface }, p.connections);
  });
  fwGauge('fpo_firewall_upgrade_pause_ms', 'The pause (hold to release) of an interface in the last firewall upgrade', ['interface', 'from', 'to', 'state'], (set) => {
    for (const p of fpag.firewallUpgrade.status().ports) if (p.pauseMs !== undefined) set({ interface: p.interface, from: p.from, to: p.to, state: p.state }, p.pauseMs);
  });
  fwGauge('fpo_firewall_upgrade_ports', 'Ports of the last firewall upgrade, by state', ['state'], (set) => {
    const st = fpag.firewallUpgrade.status();
    for (const s of ['pending', 'moving', 'done', 'rolled-back']) set({ state: s }, st.ports.filter((p) => p.state === s).length);
  });
  counter('fpo_firewall_held_packets_total', 'Packets held while their port\'s firewall moved between versions (released after; a full queue drops them as fwHoldOverflow)', [], (set) => set({}, dp.holdStats.held));
  // The etcd directory (issue 22): nothing when the host runs without one.
  const dirGauge = (name: string, help: string, labelNames: string[], fill: (d: DirectoryCounters, set: (labels: Record<string, string>, v: number) => void) => void) =>
    new Gauge({ name, help, labelNames, registers: [reg], collect() { this.reset(); const d = directory(); if (d !== null) fill(d, (l, v) => this.set(l, v)); } });
  const dirCounter = (name: string, help: string, fill: (d: DirectoryCounters) => number) =>
    new Counter({ name, help, registers: [reg], collect() { this.reset(); const d = directory(); if (d !== null) this.inc(fill(d)); } });
  dirGauge('fpo_directory_connected', 'Whether the directory watch is connected to etcd (1) or not (0: forwarding goes on with what was read)', [], (d, set) => set({}, d.connected ? 1 : 0));
  dirGauge('fpo_directory_revision', 'The etcd revision the directory is at', [], (d, set) => set({}, d.revision));
  dirGauge('fpo_directory_entries', 'Directory entries held, by kind (refused: entries that failed their check)', ['kind'], (d, set) => {
    set({ kind: 'hosts' }, d.hosts);
    set({ kind: 'interfaces' }, d.interfaces);
    set({ kind: 'remote-interfaces' }, d.remoteInterfaces);
    set({ kind: 'refused' }, d.refused);
  });
  dirCounter('fpo_directory_changes_total', 'Directory changes applied from the watch', (d) => d.changesApplied);
  dirCounter('fpo_directory_registrations_total', 'Leases this host registered under (1, plus one per lease lost and taken again)', (d) => d.registrations);
  dirCounter('fpo_directory_vms_moved_away_total', 'VMs of this host that the directory moved to another host', (d) => d.movedAway);
  counter('fpo_flow_rewrites_total', 'Installed flows changed or deleted by revalidation after a move or a directory change', [], (set) => set({}, fpag.flowRewrites));
  return reg;
}

/**
 * The metrics endpoint's limits against careless or hostile scrapers: at most
 * this many connections at once (more are closed on accept), a request's
 * headers within HEADERS_MS and the whole request within REQUEST_MS (a client
 * that sends half a request is cut off, not waited for), idle keep-alive
 * connections closed after KEEPALIVE_MS, headers at most 8 KiB.
 */
export const METRICS_LIMITS = { maxConnections: 32, headersMs: 5_000, requestMs: 10_000, keepAliveMs: 5_000, maxHeaderBytes: 8192 } as const;

export function serveMetrics(reg: Registry, addr: string): Promise<Server> {
  const { host, port } = parseAddr(addr);
  const server = createServer({ maxHeaderSize: METRICS_LIMITS.maxHeaderBytes, requestTimeout: METRICS_LIMITS.requestMs, headersTimeout: METRICS_LIMITS.headersMs, keepAliveTimeout: METRICS_LIMITS.keepAliveMs,
    connectionsCheckingInterval: 1_000 /* how often the timeouts are enforced (Node's default: 30 s) */ }, (req, res) => {
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      res.writeHead(405, { allow: 'GET, HEAD' }).end('fpo serves GET /metrics\n');
      return;
    }
    if (req.url !== '/metrics') {
      res.writeHead(404).end('fpo serves /metrics\n');
      return;
    }
    reg.metrics().then((text) => res.writeHead(200, { 'content-type': reg.contentType }).end(req.method === 'HEAD' ? undefined : text), (e: Error) => res.writeHead(500).end(e.message));
  });
  server.maxConnections = METRICS_LIMITS.maxConnections;
  return new Promise((resolve, reject) => {
    server.once('error', (e) => reject(new FpoError('FPO_ERR_IO', `--metrics ${addr}: cannot listen: ${e.message}`)));
    server.listen(port, host, () => resolve(server));
  });
}

/** Stops the endpoint at once: no new connections, and every open one closed, a scrape half-sent or idle alike. */
export function closeMetrics(server: Server): Promise<void> {
  return new Promise((resolve) => {
    server.close(() => resolve());
    server.closeAllConnections();
  });
}
