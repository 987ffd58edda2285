/**
 * A BFD session, asynchronous mode (RFC 5880 §6), single hop (RFC 5881).
 *
 * State machine (§6.8.6, on each valid packet; remote state across the top):
 *
 *            AdminDown        Down         Init        Up
 *   Down     -                Init         Up          -
 *   Init     Down(diag 3)     -            Up          Up
 *   Up       Down(diag 3)     Down(diag 3) -           -
 *
 * plus: no packet within the detection time → Down (diag 1); a local
 * shutdown → AdminDown with its diagnostic. Timers: transmit every
 * max(desired min TX, remote required min RX), jittered to 75–100 % (75–90 %
 * with a detect multiplier of 1); detection time = remote detect multiplier
 * × max(required min RX, remote desired min TX). While not Up the desired
 * min TX is at least 1 s (§6.8.3). A change of intervals runs a Poll
 * sequence: packets carry P until the peer answers with F; a longer TX
 * interval takes effect only then.
 */
import { DIAG, DIAG_NAMES, STATE, STATE_NAMES, encode, type BfdPacket } from './packet.js';
import type { TimerHeap } from './timers.js';
import { Auth, type AuthConfig } from './auth.js';

export interface SessionConfig {
  /** Desired min TX and required min RX, µs. */
  txUs: number;
  rxUs: number;
  detectMult: number;
  /** Authentication (RFC 5880 §6.7); none when absent. */
  auth?: AuthConfig;
}

export interface SessionEvents {
  send(bytes: Uint8Array): void;
  change(s: Session, from: number, to: number, why: string): void;
}

export class Session {
  state: number = STATE.Down;
  remoteState: number = STATE.Down;
  diag: number = DIAG.none;
  readonly localDisc: number;
  remoteDisc = 0;
  remoteMinRxUs = 1;
  remoteDesiredTxUs = 0;
  remoteDetectMult = 3;
  /** The configured intervals, and the ones in force (which differ during a Poll sequence or while not Up). */
  config: SessionConfig;
  private pollPending = false;
  private sendFinal = false;
  private txTimer = -1;
  private detectTimer = -1;
  private readonly out = new Uint8Array(24 + 28);
  /** Authentication state, when configured. */
  readonly auth: Auth | null;
  lastChange = { at: Date.now(), from: 'Down', to: 'Down', why: 'created' };
  rx = 0;
  tx = 0;

  constructor(localDisc: number, config: SessionConfig, private readonly timers: TimerHeap, private readonly ev: SessionEvents) {
    this.localDisc = localDisc;
    this.config = { ...config };
    this.auth = config.auth ? new Auth(config.auth) : null;
  }

  /** Desired min TX in force: at least 1 s while not Up (§6.8.3). */
  get desiredTxUs(): number {
    return this.state === STATE.Up ? this.config.txUs : Math.max(this.config.txUs, 1_000_000);
  }

  start(): void {
    this.scheduleTx(0);
  }

  stop(): void {
    if (this.txTimer >= 0) this.timers.cancel(this.txTimer);
    if (this.detectTimer >= 0) this.timers.cancel(this.detectTimer);
    this.txTimer = this.detectTimer = -1;
  }

  /** Changes the intervals; a Poll sequence tells the peer (§6.8.3). */
  setIntervals(txUs: number, rxUs: number): void {
    this.config = { ...this.config, txUs, rxUs };
    this.pollPending = true;
    this.transmit();
  }

  /** Takes the session down on purpose, telling the peer why. */
  adminDown(diag: number): void {
    this.setState(STATE.AdminDown, diag, `local: ${DIAG_NAMES[diag]}`);
    if (this.detectTimer >= 0) this.timers.cancel(this.detectTimer);
    this.detectTimer = -1;
    this.transmit();
  }

  /** Back from AdminDown. */
  adminUp(): void {
    if (this.state !== STATE.AdminDown) return;
    this.setState(STATE.Down, DIAG.none, 'local: enabled');
    this.transmit();
  }

  private setState(to: number, diag: number, why: string): void {
    const from = this.state;
    this.diag = diag;
    if (from === to) return;
    this.state = to;
    this.lastChange = { at: Date.now(), from: STATE_NAMES[from], to: STATE_NAMES[to], why };
    // Leaving or reaching Up changes the desired TX interval in force: a Poll sequence.
    if (from === STATE.Up || to === STATE.Up) this.pollPending = true;
    this.ev.change(this, from, to, why);
  }

  /** When (performance.now(), ms) the last packet whose authentication verified arrived. */
  private lastAuthRx = 0;
  /** Times the received sequence state was forgotten (§6.8.1). */
  authSeqResets = 0;

  /**
   * Checks a packet's authentication section (auth configured). RFC 5880
   * §6.8.1: bfd.AuthSeqKnown "MUST be set to zero after no packets have
   * been received on this session for at least twice the Detection Time",
   * so that a restarted peer (a new sequence number, anywhere) is taken
   * again: done here, lazily, before the check. Only packets that verify
   * count as received, so a restarted peer's rejected packets do not keep
   * the old number alive.
   */
  verifyAuth(msg: Uint8Array, detectMult: number): boolean {
    const auth = this.auth as Auth;
    const now = performance.now();
    if (auth.seqKnown && now - this.lastAuthRx >= 2 * this.detectMs) {
      auth.forgetReceived();
      this.authSeqResets++;
    }
    if (!auth.verify(msg, detectMult)) return false;
    this.lastAuthRx = now;
    return true;
  }

  /** A valid packet for this session (the caller checked §6.8.6's first rules). */
  receive(p: BfdPacket): void {
    this.rx++;
    this.remoteDisc = p.myDisc;
    this.remoteState = p.state;
    this.remoteDetectMult = p.detectMult;
    this.remoteMinRxUs = p.requiredMinRx;
    this.remoteDesiredTxUs = p.desiredMinTx;
    if (p.final) this.pollPending = false;
    if (this.state === STATE.AdminDown) return;
    if (p.state === STATE.AdminDown) {
      if (this.state !== STATE.Down) this.setState(STATE.Down, DIAG.neighborSignaledDown, `peer AdminDown (${DIAG_NAMES[p.diag] ?? p.diag})`);
    } else if (this.state === STATE.Down) {
      if (p.state === STATE.Down) this.setState(STATE.Init, DIAG.none, 'peer Down');
      else if (p.state === STATE.Init) this.setState(STATE.Up, DIAG.none, 'peer Init');
    } else if (this.state === STATE.Init) {
      if (p.state === STATE.Init || p.state === STATE.Up) this.setState(STATE.Up, DIAG.none, `peer ${STATE_NAMES[p.state]}`);
    } else if (p.state === STATE.Down) {
      this.setState(STATE.Down, DIAG.neighborSignaledDown, 'peer Down');
    }
    if (p.poll) {
      this.sendFinal = true;
      this.transmit();
    }
    this.armDetect();
  }

  /** Detection time, ms. */
  get detectMs(): number {
    return (this.remoteDetectMult * Math.max(this.config.rxUs, this.remoteDesiredTxUs)) / 1000;
  }

  private armDetect(): void {
    if (this.detectTimer >= 0) this.timers.cancel(this.detectTimer);
    this.detectTimer = -1;
    if (this.state === STATE.AdminDown || this.remoteDesiredTxUs === 0) return;
    this.detectTimer = this.timers.at(performance.now() + this.detectMs, () => {
      this.detectTimer = -1;
      if (this.state === STATE.Init || this.state === STATE.Up) this.setState(STATE.Down, DIAG.controlDetectionTimeExpired, `no packet for ${this.detectMs.toFixed(0)} ms`);
      this.transmit();
    });
  }

  private scheduleTx(delayMs: number): void {
    if (this.txTimer >= 0) this.timers.cancel(this.txTimer);
    this.txTimer = this.timers.at(performance.now() + delayMs, () => {
      this.txTimer = -1;
      this.transmit();
    });
  }

  /** Sends one packet now and schedules the next (jittered). */
  transmit(): void {
    // A peer that asked for no packets (required min RX 0) gets none, except a Final it is owed.
    if (this.remoteMinRxUs !== 0 || this.sendFinal) {
      encode({
        diag: this.diag, state: this.state, poll: this.pollPending && !this.sendFinal, final: this.sendFinal, cpi: false, demand: false,
        detectMult: this.config.detectMult, myDisc: this.localDisc, yourDisc: this.remoteDisc,
        desiredMinTx: this.desiredTxUs, requiredMinRx: this.config.rxUs, requiredMinEchoRx: 0,
      }, this.out);
      const len = this.auth ? this.auth.sign(this.out) : 24;
      this.sendFinal = false;
      this.tx++;
      this.ev.send(this.out.subarray(0, len));
    }
    const interval = Math.max(this.desiredTxUs, this.remoteMinRxUs) / 1000;
    const jitter = this.config.detectMult === 1 ? 0.75 + Math.random() * 0.15 : 0.75 + Math.random() * 0.25;
    this.scheduleTx(interval * jitter);
  }

  describe(): Record<string, unknown> {
    return {
      localDisc: this.localDisc, remoteDisc: this.remoteDisc, state: STATE_NAMES[this.state], remoteState: STATE_NAMES[this.remoteState],
      diag: DIAG_NAMES[this.diag], txUs: this.desiredTxUs, rxUs: this.config.rxUs, detectMult: this.config.detectMult,
      detectMs: this.detectMs, remoteDesiredTxUs: this.remoteDesiredTxUs, remoteMinRxUs: this.remoteMinRxUs, rx: this.rx, tx: this.tx, lastChange: this.lastChange,
    };
  }
}
