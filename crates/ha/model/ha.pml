/*
 * tandem HA: a Promela model of the sync and takeover protocol, checked with Spin 6.5
 * (scripts/model-check). README.md beside this file: what is modelled and what is not, the
 * invariants, the configurations and the measured results.
 *
 * One IKE SA between a cluster (node A active, node B standby) and a peer P, with one
 * outbound ESP SA (CHILD SA) at a time. Every cluster request is a CREATE_CHILD_SA (a rekey):
 * when it completes the cluster seals on a new key, GEN(mid, builder) (key 0 is the CHILD SA
 * of IKE_AUTH). The peer's requests are INFORMATIONAL (no key). A may crash between any two
 * of its steps, then B takes over (a single failover; B does not crash). The sync link may
 * refuse a message (B finds a gap and asks for a bulk transfer), may go down (what is in flight
 * both ways is lost, A goes solo) and come back (bulk transfer on B's Hello); the standby may be
 * too slow (ack timeout: A goes solo, the link stays up, A resyncs B at its next lease tick).
 *
 * Comments name the Rust each step models: crates/ha/src/{active,lease,standby}.rs,
 * crates/ike/src/{standby,reliability}.rs, crates/daemon/src/{ha,engine_task}.rs.
 *
 * Switches (spin -DNAME):
 *   deliberately broken (the checker must find a violation):
 *     BROKEN_RELEASE_EARLY  a datagram leaves before the standby acked its state (no write-ahead)
 *     BROKEN_NO_LEASE       no leases: the active seals freely and syncs its counter; the standby
 *                           resumes at the last synced number + 1
 *     BROKEN_SOLO_RAISE     solo, the active raises the ceiling of an SA the standby may hold
 *                           instead of rekeying it
 *     BROKEN_RESUME_AT_LEASE  resume at max(lease, shift), not + 1
 *     BROKEN_ACK_ON_RECEIPT the standby acknowledges what it received, even a message it refused
 *                           because of a gap
 *   the Rust code before the fixes of findings F1, F2 and F4 (kept so that a return of the old
 *   behaviour is caught; the default follows the code as fixed):
 *     OLD_INSTALL_AT_1      F1: `Ha::installing` installed a CHILD SA that was not mirrored at
 *                           takeover at next_seq 1; now one that completes a request inherited at
 *                           takeover resumes at `StandbySync::resume_seq` (`SharedExchanges`)
 *     OLD_SOLO_GRANT        F2: a CHILD SA that completed while solo counted as never mirrored,
 *                           even if the exchange that made it (with its KE) was mirrored; now
 *                           `SharedExchanges::left_behind` makes it count as mirrored
 *     OLD_SYNCING_RELEASE   F4: `ActiveSync::transmit` held only in `InSync`, not while `Syncing`
 *   the Rust code as built, where the model (default) follows the intended rule:
 *     ASBUILT_STALE_TAKEOVER F3: check I2/I3 also when the standby takes over a mirror the active
 *                           had stopped syncing (`Ha::take_over` counts it, `stale_takeovers`, and
 *                           takes over anyway)
 *   LIVE: the liveness property instead of the safety one (pan -a -f).
 */

/* Bounds (defaults: the `ike` configuration of scripts/model-check; it passes the others). */
#ifndef NMID
#define NMID    2       /* MIDs 0..NMID-1 (counters 0..NMID) */
#endif
#ifndef NREQ_C
#define NREQ_C  NMID    /* requests the cluster may send */
#endif
#ifndef NREQ_P
#define NREQ_P  NMID    /* requests the peer may send */
#endif
#ifndef SEQMAX
#define SEQMAX  4       /* ESP sequence numbers 1..SEQMAX (the space ends there) */
#endif
#ifndef SHIFT
#define SHIFT   4       /* oseq-shift */
#endif
#ifndef MAXLOSS
#define MAXLOSS 1       /* datagrams lost on the wire (besides queue overflow) */
#endif
#ifndef SYNCLOSS
#define SYNCLOSS 1      /* sync messages the link refuses (Ha::send: "sync message not queued") */
#endif
#ifndef MAXLINK
#define MAXLINK 1       /* sync link events: 1 = down, 2 = down and up again (bulk sync) */
#endif
#ifndef MAXTO
#define MAXTO   1       /* ack timeouts (ActiveSync::tick) */
#endif
#ifndef MAXBULK
#define MAXBULK 1       /* bulk transfers (after a link flap, an ack timeout or a gap) */
#endif

#define SYNCCAP 3
#define WIRECAP 2
#define HELDCAP 3

#define NGEN    (1 + 2*NMID)
#ifdef BROKEN_NO_LEASE
#define CEIL0   SEQMAX          /* no ceiling */
#else
#define CEIL0   SHIFT           /* the implicit lease of a new CHILD SA */
#endif
#define GEN(m, c)  (1 + 2*(m) + (c) - 1)    /* key made by our CREATE_CHILD_SA `m`, request built by node c */
#define NOGEN   255
#define MAX(x, y)  ((x) > (y) -> (x) : (y))
#define MIN(x, y)  ((x) < (y) -> (x) : (y))

/* message contents: who built the bytes */
#define NA 1            /* node A */
#define NB 2            /* node B */
#define NP 3            /* the peer */

mtype = { REQ, RESP, SNAP, LEASE, BULK, BDONE };
mtype = { DOWN, SYNCING, INSYNC };

/* sync link: kind, seq, f1..f6 (SNAP: next, out, exp, resp, gen; LEASE: gen, ceiling;
   BULK: the snapshot's five and the lease ceiling) */
chan sync = [SYNCCAP] of { mtype, byte, byte, byte, byte, byte, byte, byte };
/* SyncMsg::Ack: acks are cumulative, so only the latest one in flight matters (a newer one
   overwrites it; the run where the active took the older one first is explored as well) */
byte ack_fl;
chan to_peer = [WIRECAP] of { mtype, byte, byte };  /* kind, MID, content */
chan to_cluster = [WIRECAP] of { mtype, byte, byte };
chan held = [HELDCAP] of { byte, mtype, byte, byte }; /* ActiveSync::held: (seq, datagram) */

/* ---- node A, the active ---- */
/* Reliability: next_request_id, outstanding (content, 0 none), expected_peer_id, last_response */
byte a_next, a_out, a_exp, a_resp;
/* the outbound ESP SA and its LeaseBook entry: key, last sealed, ceiling in force,
   asked (sync seq, 0 none) and its ceiling, mirrored */
byte a_gen, a_seq, a_ceil = CEIL0, a_asked, a_askc;
bool a_mirr = 1;
bool a_reqmir;          /* the outstanding request was (or may have been) sent to the standby */
/* ActiveSync: seq, acked, state, bulk_done */
byte s_seq, s_acked, s_bulk;
mtype s_state = INSYNC;
bool link_up = 1;
bool a_dead;

/* ---- node B, the standby: the mirror (Endpoint::mirror) and StandbySync ---- */
byte m_next, m_out, m_exp, m_resp, m_gen;
bool m_valid = 1;       /* the mirror holds the IKE SA */
byte b_applied;
bool b_insync = 1;
bool b_await;           /* StandbySync::awaiting_bulk: ignore everything before a BulkStart */
bool hello_fl;          /* a Hello of the standby in flight to the active (asks for a bulk) */
byte l_gen = NOGEN, l_ceil;  /* StandbySync::leases, for the latest SA leased */

/* ---- the peer P ---- */
byte p_next, p_exp;     /* next_request_id, expected_peer_id */
bool p_out;
byte preq[NMID];        /* content of the first request received under each MID */
byte presp[NMID];       /* content of the first response received under each MID */
byte p_gen;             /* the key of the CHILD SA the peer installed last */

/* ---- ghosts and budgets ---- */
/* What each node sealed, per key: A seals 1, 2, ... on its current key (a_hi[g] is its last,
   so sealedA[g][s] <=> 1 <= s <= a_hi[g]); B seals one number per key (b_at[g], 0 none). */
byte a_hi[NGEN];
byte b_at[NGEN];
#define SEALED_A(g, s) ((s) >= 1 && (s) <= a_hi[g])
#define SEALED_B(g, s) ((s) >= 1 && b_at[g] == (s))
bool took;              /* B took over */
bool stale;             /* ... from a mirror the design does not promise to be current */
bool solo;              /* A ran without its standby since the standby's last BulkDone */
byte solo_pt;           /* s_seq when A last went solo */
byte wloss, sloss, linkev, ackto, nbulk;

#ifdef ASBUILT_STALE_TAKEOVER
#define EXEMPT  0
#else
#define EXEMPT  (took && stale)
#endif

/* When a retransmission timer may fire. IKE's timeout (seconds) is far above a round trip, the
   ack timeout (50 ms) and a takeover (keepalived: 20-50 ms), so it fires with the wire quiet,
   nothing held for an ack, and not between the crash and the takeover. A copy sent while the
   last one is in flight would only add duplicates, which loss and the caches already cover. */
#define RETX_OK (len(to_peer) == 0 && len(to_cluster) == 0 && len(held) == 0 && (took || !a_dead))

/* A datagram on the lossy wire. */
inline wire(ch, k, m, c) {
  if
  :: len(ch) < WIRECAP -> ch!k, m, c
  :: len(ch) >= WIRECAP -> skip           /* queue overflow: lost */
  :: wloss < MAXLOSS -> wloss++           /* lost on the wire */
  fi
}

/* Ha::send: a frame onto the sync link, or refused (then the standby sees a gap). */
inline sync_send(k, s, f1, f2, f3, f4, f5, f6) {
  if
  :: sync!k, s, f1, f2, f3, f4, f5, f6
  :: sloss < SYNCLOSS -> sloss++
  fi
}

/* One exchange at a time between the peer and the cluster (no crossed requests): a side
   starts a request only when neither the peer nor the node serving the cluster has one. */
#ifndef POSTNEW
#define POSTNEW 1       /* new exchanges may start after the takeover */
#endif
#define IKE_IDLE (!p_out && (took -> (m_out == 0 && POSTNEW) : a_out == 0))

#define CONNECTED (s_state != DOWN)
#define ROOM (!CONNECTED || len(sync) < SYNCCAP)

/* Endpoint::finish -> SaObserver::ike_sa_changed -> ActiveSync::observed: a numbered
   snapshot of the whole IKE SA (both MID counters, outstanding request, response cache, CHILD SA). */
inline changed() {
  if
  :: CONNECTED ->
     s_seq++;
     if :: a_out != 0 -> a_reqmir = 1 :: else -> skip fi;
     sync_send(SNAP, s_seq, a_next, a_out, a_exp, a_resp, a_gen, 0)
  :: else -> skip
  fi
}

/* ActiveSync::transmit: a datagram leaves now, or is held until the standby acked seq. */
#if defined(BROKEN_RELEASE_EARLY)
#define HOLDS 0
#elif defined(OLD_SYNCING_RELEASE)
#define HOLDS (s_state == INSYNC && s_acked < s_seq)
#else
#define HOLDS (s_state != DOWN && s_acked < s_seq)
#endif
inline transmit(k, m, c) {
  if
  :: HOLDS -> held!s_seq, k, m, c
  :: else -> wire(to_peer, k, m, c)
  fi
}

/* ActiveSync::link_down (also reached from ActiveSync::tick): solo, everything held leaves. */
inline link_down() {
  s_state = DOWN;
  s_bulk = 0;
  s_acked = s_seq;
  /* LeaseBook::link_down: an ask in flight may or may not have been applied */
  if :: a_asked != 0 -> a_asked = 0; a_mirr = 1 :: else -> skip fi;
  do
  :: held?hs, hk, hm, hc -> wire(to_peer, hk, hm, hc)
  :: empty(held) -> break
  od;
  solo = 1;
  solo_pt = s_seq
}

/* LeaseBook::check: the top of the lease (asked or in force) and the ceiling to ask for.
   The sequence space ends at SEQMAX (a real SA would be rekeyed at exhaustion). */
#define TOP   (a_asked != 0 -> a_askc : a_ceil)
#define WANT  MIN(MAX(TOP, a_seq) + SHIFT, SEQMAX)

/* lease::resume_at(lease, shift) = max(lease, shift) + 1, via StandbySync::resume_seq */
#define LEASE_OF(g) (l_gen == (g) -> l_ceil : 0)
#if defined(BROKEN_NO_LEASE)
#define RESUME(g) (LEASE_OF(g) + 1)
#elif defined(BROKEN_RESUME_AT_LEASE)
#define RESUME(g) MAX(LEASE_OF(g), SHIFT)
#else
#define RESUME(g) (MAX(LEASE_OF(g), SHIFT) + 1)
#endif

/* B seals on a CHILD SA from `first`. A seals contiguously from 1 and is dead by then, so a
   collision exists iff B's first number is one A sealed: B seals only that one. */
inline b_seal(g, first) {
  if
  :: first <= SEQMAX ->
     printf("B: seals key %d from %d\n", g, first);
     b_at[g] = first;
     assert(!(SEALED_A(g, first) && SEALED_B(g, first)))   /* I1: no (key, seq) sealed twice */
  :: else -> skip
  fi
}

/* ActiveSync::start_bulk (Ha::begin_bulk): BulkStart, the CHILD SA's lease
   (LeaseBook::reannounce), its IKE SA's snapshot (three numbered messages sent as one: BULK
   carries the last number), then BulkDone. */
inline start_bulk() {
  printf("A: bulk\n");
  nbulk++;
  s_state = SYNCING;
  s_seq = s_seq + 3;
#ifndef BROKEN_NO_LEASE
  a_askc = MAX(a_ceil, MIN(a_seq + SHIFT, SEQMAX)); a_asked = s_seq; a_mirr = 1;
#else
  a_askc = a_seq;
#endif
  if :: a_out != 0 -> a_reqmir = 1 :: else -> skip fi;
  sync_send(BULK, s_seq, a_next, a_out, a_exp, a_resp, a_gen, a_askc);
  s_seq++; s_bulk = s_seq; sync_send(BDONE, s_seq, 0, 0, 0, 0, 0, 0)
}

active proctype Active() {
  mtype k, hk;
  byte m, c, s, hs, hm, hc;
end:
  do
  /* Crash at any step (between any two of the atomic steps below). */
  :: atomic { a_dead = 1; printf("A: crash\n");
       /* a crashed node forgets (merges states); its seals stay in a_hi */
       a_next = 0; a_out = 0; a_exp = 0; a_resp = 0; a_gen = 0; a_seq = 0; a_ceil = 0;
       a_asked = 0; a_askc = 0; a_mirr = 0; a_reqmir = 0; s_seq = 0; s_acked = 0; s_bulk = 0;
       s_state = DOWN; m = 0; c = 0; s = 0; hs = 0; hm = 0; hc = 0; k = 0; hk = 0;
       do :: held?_, _, _, _ :: empty(held) -> break od };
     break

  /* Endpoint starts a CREATE_CHILD_SA (a rekey of any cause, including LeaseOutcome::Rekey):
     Reliability::send_request; Endpoint::finish -> ActiveSync::observed; the datagram
     through ActiveSync::transmit. */
  :: atomic { IKE_IDLE && a_next < NREQ_C && ROOM && len(held) < HELDCAP ->
       a_out = NA; a_next++; a_reqmir = 0; printf("A: request %d\n", a_next - 1);
       changed();
       transmit(REQ, a_next - 1, NA) }

  /* Reliability::tick -> Tick::Retransmit: the same bytes again (no new state to sync). */
  :: atomic { a_out != 0 && RETX_OK -> transmit(REQ, a_next - 1, a_out) }

  /* A datagram from the peer (Endpoint::handle_datagram). */
  :: atomic { len(to_cluster) > 0 && ROOM && len(held) < HELDCAP ->
       to_cluster?k, m, c;
       if
       :: k == REQ ->
          /* Reliability::check_request */
          if
          :: m == a_exp ->                          /* RequestCheck::Process */
             a_exp++; a_resp = NA;                  /* Reliability::responded */
             printf("A: answers peer request %d\n", m);
             changed();
             transmit(RESP, m, NA)
          :: m != a_exp && a_resp != 0 && m + 1 == a_exp ->
             transmit(RESP, m, a_resp)              /* RequestCheck::Resend: the cached bytes */
          :: else -> skip                           /* RequestCheck::Drop */
          fi
       :: k == RESP ->
          if
          :: a_out != 0 && m + 1 == a_next ->       /* Reliability::accept_response */
             /* ex_child initiator_child_response: the new CHILD SA's key comes from our
                request's nonce and KE and the peer's response. Installed at once (EngineTask::flush -> Ha::installing -> ActiveSync::
                child_sa_installed -> LeaseBook::add_from(spi, 1, connected): the implicit lease);
                the old one removed (LeaseBook::remove). */
             printf("A: request %d done: key %d\n", m, GEN(m, a_out));
             a_gen = GEN(m, a_out); a_out = 0; a_seq = 0; a_ceil = CEIL0; a_asked = 0;
#ifdef OLD_SOLO_GRANT
             a_mirr = CONNECTED;
#else
             a_mirr = CONNECTED || a_reqmir;        /* the standby may derive this key */
#endif
             a_reqmir = 0;
             changed()
          :: else -> skip
          fi
       fi }

  /* The dataplane seals one packet (SeqCounter: never past the lease ceiling). */
  :: atomic { a_seq < a_ceil && a_seq < SEQMAX ->
       a_seq++;
       a_hi[a_gen] = a_seq;
       assert(!(SEALED_A(a_gen, a_seq) && SEALED_B(a_gen, a_seq))) }   /* I1 */

#ifndef BROKEN_NO_LEASE
  /* Ha::lease_tick -> ActiveSync::check_lease -> LeaseBook::check (at any moment: the tick
     runs every 5 ms, not at each packet). LeaseOutcome::Rekey is the CREATE_CHILD_SA above. */
  :: atomic { a_seq + SHIFT/2 >= TOP && WANT > TOP && ROOM &&
              (CONNECTED || !a_mirr
#ifdef BROKEN_SOLO_RAISE
               || 1
#endif
              ) ->
       if
       :: CONNECTED ->                              /* LeaseOutcome::Ask */
          s_seq++; a_asked = s_seq; a_askc = WANT; printf("A: lease ask %d (seq %d)\n", a_askc, s_seq);
          sync_send(LEASE, s_seq, a_gen, a_askc, 0, 0, 0, 0)
       :: else -> a_ceil = WANT; printf("A: solo raise %d\n", a_ceil)  /* LeaseOutcome::Raise (never mirrored) */
       fi }
#else
  /* no leases: the counter is synced now and then (6WIND's seqnum sync) */
  :: atomic { CONNECTED && a_seq > a_askc && ROOM ->
       s_seq++; a_askc = a_seq;
       sync_send(LEASE, s_seq, a_gen, a_askc, 0, 0, 0, 0) }
#endif

  /* ActiveSync::ack: cumulative; releases held datagrams up to seq; LeaseBook::acked. */
  :: atomic { ack_fl != 0 ->
       s = ack_fl; ack_fl = 0;
       if
       :: s > s_acked && s <= s_seq ->
          s_acked = s; printf("A: ack %d\n", s);
          if :: s_bulk != 0 && s_bulk <= s -> s_bulk = 0; s_state = INSYNC :: else -> skip fi;
          do
          :: held?<hs, hk, hm, hc> ->
             if
             :: hs <= s -> held?hs, hk, hm, hc; wire(to_peer, hk, hm, hc)
             :: else -> break
             fi
          :: empty(held) -> break
          od;
          if
          :: a_asked != 0 && a_asked <= s ->
             a_asked = 0; a_mirr = 1;
             if :: a_askc > a_ceil -> a_ceil = a_askc; printf("A: ceiling %d\n", a_ceil) :: else -> skip fi
          :: else -> skip
          fi
       :: else -> skip
       fi;
       s = 0; hs = 0; hm = 0; hc = 0; hk = 0 }

  /* The sync link goes down (LinkEvent::PeerDown): what is in flight, both ways, is lost. */
  :: atomic { link_up && linkev < MAXLINK -> linkev++; link_up = 0; printf("link down\n");
       do :: sync?_, _, _, _, _, _, _, _ :: empty(sync) -> break od;
       ack_fl = 0; hello_fl = 0;
       link_down() }

  /* ActiveSync::tick: something held longer than ack-timeout: solo, the link stays up. */
  :: atomic { len(held) > 0 && s_state != DOWN && ackto < MAXTO -> ackto++; printf("A: ack timeout\n"); link_down() }

  /* The link comes back (LinkEvent::PeerUp): Ha::hello both ways; on B StandbySync::link_up. */
  :: atomic { !link_up && linkev < MAXLINK -> linkev++; link_up = 1; printf("link up\n");
       b_applied = 0; b_insync = 0; b_await = 1; hello_fl = 1 }

  /* The standby's Hello (after PeerUp, or after a gap): Ha::begin_bulk. */
  :: atomic { hello_fl && nbulk < MAXBULK && len(sync) + 2 <= SYNCCAP -> hello_fl = 0; start_bulk() }

  /* Ha::lease_tick: the standby fell behind (ack timeout) but is still connected: resync. */
  :: atomic { link_up && s_state == DOWN && nbulk < MAXBULK && len(sync) + 2 <= SYNCCAP -> start_bulk() }
  od
}

active proctype Standby() {
  mtype k;
  byte s, f1, f2, f3, f4, f5, f6, g, r;
end_standby:
  do
  /* StandbySync::handle: in order only; applied, then acknowledged. */
  :: atomic { len(sync) > 0 ->
       sync?k, s, f1, f2, f3, f4, f5, f6;
       if
       :: b_await && k != BULK -> skip             /* before the BulkStart: ignored */
       :: !b_await && s != b_applied + 1 && k != BULK ->
          /* StandbyError::Gap: refused; Ha::link_event asks for a bulk (link_up, hello) */
          printf("B: gap at %d\n", s);
#ifdef BROKEN_ACK_ON_RECEIPT
          ack_fl = s
#else
          b_applied = 0; b_insync = 0; b_await = 1; hello_fl = 1
#endif
       :: else ->
          b_await = 0;
          if
          :: k == SNAP ->                           /* Endpoint::mirror */
             m_next = f1; m_out = f2; m_exp = f3; m_resp = f4; m_gen = f5; m_valid = 1
          :: k == LEASE ->
             if :: l_gen == f1 -> l_ceil = MAX(l_ceil, f2) :: else -> l_gen = f1; l_ceil = f2 fi
          :: k == BULK ->
             /* BulkStart: Endpoint::unmirror, leases.clear(); Lease; IkeSa: Endpoint::mirror */
             b_insync = 0;
             l_gen = f5; l_ceil = f6;
             m_next = f1; m_out = f2; m_exp = f3; m_resp = f4; m_gen = f5; m_valid = 1
          :: k == BDONE ->
             b_insync = 1;
             if :: s > solo_pt -> solo = 0 :: else -> skip fi
          fi;
          b_applied = s; printf("B: applied %e %d\n", k, s);
          ack_fl = s
       fi;
       k = 0; s = 0; f1 = 0; f2 = 0; f3 = 0; f4 = 0; f5 = 0; f6 = 0 }

  /* keepalived makes B master after A died: the sync link's contents are lost
     (what B applied before this point is the prefix that arrived). Ha::take_over. */
  :: atomic { a_dead ->
       do :: sync?_, _, _, _, _, _, _, _ :: empty(sync) -> break od;
       ack_fl = 0;
       took = 1;
       stale = solo || !b_insync || !m_valid;
       printf("B: takeover (stale %d): next %d out %d exp %d key %d lease %d/%d\n", stale, m_next, m_out, m_exp, m_gen, l_gen, l_ceil);
       if
       :: m_valid ->
          /* Ha::take_over: every mirrored CHILD SA resumes at StandbySync::resume_seq */
          r = RESUME(m_gen); b_seal(m_gen, r); r = 0;
          /* Endpoint::take_over -> Reliability::resume: the outstanding request, byte for byte */
          if :: m_out != 0 -> wire(to_peer, REQ, m_next - 1, m_out) :: else -> skip fi
       :: else -> skip          /* nothing mirrored: an empty table (the peer renegotiates) */
       fi;
       /* the standby's sync state is of no further use (merges states) */
       b_applied = 0; b_insync = 0; b_await = 0; hello_fl = 0; solo = 0; solo_pt = 0;
       linkev = MAXLINK; ackto = MAXTO; nbulk = MAXBULK; link_up = 0 };
     break
  od;

  /* B is the active node, running the mirrored IKE SA as its own (solo: no standby). */
end_active:
  do
  :: atomic { len(to_cluster) > 0 && m_valid ->
       to_cluster?k, f1, f2;
       if
       :: k == REQ ->
          if
          :: f1 == m_exp -> m_exp++; m_resp = NB; printf("B: answers peer request %d anew\n", f1); wire(to_peer, RESP, f1, NB)
          :: f1 != m_exp && m_resp != 0 && f1 + 1 == m_exp ->
             wire(to_peer, RESP, f1, m_resp)       /* answered from the mirrored response cache */
          :: else -> skip
          fi
       :: k == RESP ->
          if
          :: m_out != 0 && f1 + 1 == m_next ->
             /* the key comes from our request's nonce and KE (the mirrored PendingChild if the
                old active built it) and the peer's response */
             g = GEN(f1, m_out); m_gen = g; printf("B: request %d done: key %d\n", f1, g);
             if
             :: m_out == NA ->
                /* an exchange the old active began: the key may be one A sealed with.
                   EngineTask::flush -> Ha::installing(spi_in) */
#ifdef OLD_INSTALL_AT_1
                b_seal(g, 1)                       /* resumes.remove(..).unwrap_or(1) */
#else
                r = RESUME(g); b_seal(g, r)        /* StandbySync::resume_seq(spi_in) */
#endif
             :: else -> skip                       /* B's own fresh key: A never had it */
             fi;
             m_out = 0
          :: else -> skip
          fi
       fi;
       k = 0; f1 = 0; f2 = 0; g = 0; r = 0 }
  /* Reliability::tick: retransmit the outstanding request */
  :: atomic { m_valid && m_out != 0 && RETX_OK -> wire(to_peer, REQ, m_next - 1, m_out) }
  /* a new CREATE_CHILD_SA of this node */
  :: atomic { m_valid && IKE_IDLE && m_next < NREQ_C -> m_out = NB; m_next++; printf("B: request %d\n", m_next - 1); wire(to_peer, REQ, m_next - 1, NB) }
  od
}

/* The IKE peer (an RFC 7296 responder and initiator, window 1 each way). */
active proctype Peer() {
  mtype k;
  byte m, c;
end:
  do
  :: atomic { len(to_peer) > 0 ->
       to_peer?k, m, c; printf("P: got %e %d from node %d\n", k, m, c);
       if
       :: k == REQ ->
          /* I2: a request MID inside the window (the next one, or a retransmission of the last;
             the model's wire does not reorder), and one content per MID */
          assert(EXEMPT || (m <= p_exp && m + 1 >= p_exp));
          assert(EXEMPT || m >= NMID || preq[m] == 0 || preq[m] == c);
          if
          :: m == p_exp -> preq[m] = c; p_exp++; p_gen = GEN(m, c); wire(to_cluster, RESP, m, c)
          :: m + 1 == p_exp -> wire(to_cluster, RESP, m, preq[m])   /* its cached response */
          :: else -> skip
          fi
       :: k == RESP ->
          assert(EXEMPT || m < p_next);               /* a response to a request it sent */
          assert(EXEMPT || presp[m] == 0 || presp[m] == c);    /* I2: one response per MID */
          if :: presp[m] == 0 -> presp[m] = c :: else -> skip fi;
          if :: p_out && m + 1 == p_next -> p_out = 0 :: else -> skip fi
       fi;
       k = 0; m = 0; c = 0 }
  :: atomic { IKE_IDLE && p_next < NREQ_P -> p_out = 1; p_next++; wire(to_cluster, REQ, p_next - 1, NP) }
  :: atomic { p_out && RETX_OK -> wire(to_cluster, REQ, p_next - 1, NP) }
  od
}

/* I3 after a takeover: the two ends agree on every exchange.
   - no orphan: B's outstanding request is the one the peer expects, or one it processed with
     these very bytes (it answers from its cache);
   - B knows every request of its own the peer processed, and every exchange of the peer that
     the peer considers complete;
   - with nothing outstanding, B seals on the CHILD SA the peer installed last. */
#define AGREE ( \
  (m_out == 0 || m_next - 1 == p_exp || (m_next - 1 < p_exp && preq[m_next - 1] == m_out)) && \
  m_next >= p_exp && \
  m_exp + p_out >= p_next && \
  (m_out != 0 || m_gen == p_gen))

#ifdef LIVE
/* I6 (IKE part): after a takeover from a current mirror, every outstanding exchange completes. */
ltl live { [] ((took && !EXEMPT) -> <> (!p_out && m_out == 0)) }
#else
ltl agree { [] (!took || EXEMPT || AGREE) }
#endif
