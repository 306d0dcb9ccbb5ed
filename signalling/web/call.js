// Calls in the web client. The server chooses the topology: with two
// people the browsers talk peer-to-peer (SDP and candidates relayed by
// `call_signal`); from the threshold each browser publishes to the SFU and
// subscribes to the others (`call_publish`, `call_subscribe`). The grid is
// the same either way.

const $ = (sel) => document.querySelector(sel);

/** Capture settings; tests may set `window.conferCapture` before a call. */
function capture() {
  return Object.assign({ width: 640, height: 360, frameRate: 15 }, window.conferCapture || {});
}

/** Simulcast encodings for a capture: three layers from 960×540, else two. */
function encodings({ width, height }) {
  if (Math.min(width, height) >= 540) {
    return [
      { rid: 'q', scaleResolutionDownBy: 4, maxBitrate: 150_000 },
      { rid: 'h', scaleResolutionDownBy: 2, maxBitrate: 500_000 },
      { rid: 'f', maxBitrate: 1_500_000 },
    ];
  }
  return [
    { rid: 'q', scaleResolutionDownBy: 2, maxBitrate: 150_000 },
    { rid: 'h', maxBitrate: 600_000 },
  ];
}

/** The `ice_servers` of the protocol as `RTCIceServer`s. */
function iceServers(list) {
  return (list || []).map((s) => ({ urls: s.urls, username: s.username, credential: s.credential }));
}

/** Waits until ICE gathering is complete (at most 2 s): the SFU takes the
 * offer's candidates in one piece. */
function gathered(pc) {
  if (pc.iceGatheringState === 'complete') return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => { if (pc.iceGatheringState === 'complete') { pc.removeEventListener('icegatheringstatechange', done); resolve(); } };
    pc.addEventListener('icegatheringstatechange', done);
    setTimeout(resolve, 2000);
  });
}

export class CallManager {
  constructor(app) {
    this.app = app;
    this.call = null;          // the call snapshot from the server
    this.deviceId = sessionStorage.getItem('confer.device') || crypto.randomUUID();
    sessionStorage.setItem('confer.device', this.deviceId);
    this.local = null;         // MediaStream
    this.topology = null;
    this.p2p = null;           // {pc, peer, pending candidates}
    this.pub = null;           // RTCPeerConnection publishing to the SFU
    this.sub = null;           // RTCPeerConnection receiving from the SFU
    this.subSlots = 0;
    this.slots = new Map();    // mid → user id (SFU)
    this.tiles = new Map();    // key → tile element
    this.ringing = null;
    this.muted = false;
    this.cameraOff = false;
    this.sharing = null;
    this.quality = new Map();  // mid → quality asked for
    this.joining = null;       // a call being started or joined (its ack not yet here)
    this.early = null;         // a call_topology that came before that ack
    this.earlySignals = [];    // call_signal frames that came before the peer connection
    $('#accept').onclick = () => this.accept();
    $('#decline').onclick = () => this.decline();
    $('#hangup').onclick = () => this.hangUp();
    $('#mute').onclick = () => this.toggleMute();
    $('#camera').onclick = () => this.toggleCamera();
    $('#screen').onclick = () => this.toggleScreen();
  }

  // ---- from the server ----------------------------------------------------

  onWelcome(calls) {
    const mine = this.call && calls.find((c) => c.id === this.call.id);
    const meThere = mine && mine.participants.find((p) => p.user_id === this.app.userId);
    if (this.call && meThere && meThere.state === 'joined') {
      // Reconnected during our call: resume it on the same device (the
      // peer connections stay as they are).
      this.resuming = this.call.id;
      this.app.request({ type: 'call_join', call_id: this.call.id, device_id: this.deviceId }).catch(() => this.teardown());
    } else if (this.call) {
      // It ended, or our place was given up, while we were away.
      this.teardown();
    }
    for (const call of calls) {
      const me = call.participants.find((p) => p.user_id === this.app.userId);
      if (!this.call && me && me.state === 'ringing') this.ring(call);
    }
  }

  onEvent(ev) {
    switch (ev.kind) {
      case 'call': return this.onCall(ev.call);
      case 'call_topology': return this.onTopology(ev);
      case 'call_signal': return this.onSignal(ev);
      case 'call_slot':
        this.slots.set(ev.mid, ev.user_id);
        this.label(`sfu:${ev.mid}`, ev.user_id, ev.screen);
        return undefined;
      case 'call_speaker':
        for (const [key, tile] of this.tiles) tile.classList.toggle('speaker', tile.dataset.user === ev.user_id && key !== 'local');
        return undefined;
      case 'call_layer': return this.onLayer(ev);
      case 'call_moved': return this.teardown();
      case 'call_media_lost': return this.onMediaLost(ev);
      default: return undefined;
    }
  }

  onCall(call) {
    const me = call.participants.find((p) => p.user_id === this.app.userId);
    if (call.state === 'ended') {
      if (this.ringing && this.ringing.id === call.id) this.stopRinging();
      if (this.call && this.call.id === call.id) this.teardown();
      return;
    }
    if (this.call && this.call.id === call.id) {
      this.call = call;
      this.renderParticipants();
      if (this.topology === 'sfu') this.ensureSlots().catch((e) => console.warn('slots', e));
      return;
    }
    if (!this.call && me && me.state === 'ringing') this.ring(call);
    if (this.ringing && this.ringing.id === call.id && me && me.state !== 'ringing') this.stopRinging();
  }

  async onTopology(ev) {
    if (!this.call && this.joining === ev.call_id) { this.early = ev; return; }
    if (!this.call || ev.call_id !== this.call.id) return;
    if (ev.ice_servers) this.iceServers = iceServers(ev.ice_servers);
    // A new topology for the same peer after the peer moved to another
    // device means negotiating afresh; after our own resume it does not.
    if (ev.topology === 'p2p' && this.p2p && this.p2p.peer === ev.peer && this.resuming !== ev.call_id) this.closeP2P();
    this.resuming = null;
    this.topology = ev.topology;
    $('#call-topology').textContent = ev.topology === 'p2p' ? 'peer-to-peer' : 'via server';
    if (ev.topology === 'p2p') {
      this.closeSfu();
      await this.startP2P(ev.peer, ev.offerer);
    } else {
      // Make before break: the peer-to-peer connection stays until the
      // SFU's media arrives.
      await this.startSfu();
    }
  }

  async onMediaLost(ev) {
    // The server lost our SFU sessions (a media worker failed); the call
    // goes on: open them afresh, they land on a live worker.
    if (!this.call || ev.call_id !== this.call.id || this.topology !== 'sfu') return;
    this.closeSfu();
    await this.startSfu();
  }

  async onSignal(ev) {
    if (!this.p2p) {
      // Only signals of the call being set up wait for its connection.
      if (ev.call_id === (this.call?.id ?? this.joining)) this.earlySignals.push(ev);
      return;
    }
    if (ev.from !== this.p2p.peer) return;
    const { pc } = this.p2p;
    const s = ev.signal;
    if (s.type === 'offer' || s.type === 'answer') {
      await pc.setRemoteDescription({ type: s.type, sdp: s.sdp });
      for (const c of this.p2p.pending.splice(0)) await pc.addIceCandidate(c).catch(() => {});
      if (s.type === 'offer') {
        await pc.setLocalDescription(await pc.createAnswer());
        this.signal({ type: 'answer', sdp: pc.localDescription.sdp });
      }
    } else if (s.type === 'candidate' && s.candidate) {
      if (pc.remoteDescription) await pc.addIceCandidate(s.candidate).catch(() => {});
      else this.p2p.pending.push(s.candidate);
    }
  }

  async onLayer(ev) {
    // Dynacast: nobody needs this layer, so stop encoding it (or resume).
    const sender = this.pub && this.pub.getSenders().find((s) => s.track && s.track.kind === 'video');
    if (!sender) return;
    const params = sender.getParameters();
    const enc = (params.encodings || []).find((e) => e.rid === ev.rid);
    if (!enc || enc.active === ev.needed) return;
    enc.active = ev.needed;
    await sender.setParameters(params).catch((e) => console.warn('layer', e));
  }

  // ---- the user's actions ------------------------------------------------

  async start(conversationId, media) {
    if (this.call || this.pending || !conversationId) return;
    this.pending = true;
    try {
      await this.openMedia(media);
      const ack = await this.app.request({ type: 'call_start', conversation_id: conversationId, media, device_id: this.deviceId });
      this.enter(ack.call, ack.ice_servers);
    } catch (e) {
      if (!this.call) this.stopMedia();
      alert(`Cannot call: ${e.message}`);
    } finally {
      this.pending = false;
    }
  }

  ring(call) {
    this.ringing = call;
    const c = this.app.conversations.get(call.conversation_id);
    $('#ring-text').textContent = `${this.app.nameOf(call.started_by)} is calling${c ? ` in ${c.title}` : ''} (${call.media})`;
    const dialog = $('#ring');
    if (!dialog.open) dialog.show();
  }

  stopRinging() {
    this.ringing = null;
    const dialog = $('#ring');
    if (dialog.open) dialog.close();
  }

  async accept() {
    const call = this.ringing;
    this.stopRinging();
    if (!call || this.call || this.pending) return;
    this.pending = true;
    try {
      await this.openMedia(call.media);
      this.joining = call.id;
      const ack = await this.app.request({ type: 'call_join', call_id: call.id, device_id: this.deviceId });
      this.enter(ack.call, ack.ice_servers);
    } catch (e) {
      if (!this.call) this.stopMedia();
      this.joining = null;
      alert(`Cannot join: ${e.message}`);
    } finally {
      this.pending = false;
    }
  }

  decline() {
    const call = this.ringing;
    this.stopRinging();
    if (call) this.app.request({ type: 'call_decline', call_id: call.id }).catch(() => {});
  }

  hangUp() {
    if (this.call) this.app.request({ type: 'call_leave', call_id: this.call.id }).catch(() => {});
    this.teardown();
  }

  toggleMute() {
    this.muted = !this.muted;
    for (const t of this.local?.getAudioTracks() || []) t.enabled = !this.muted;
    $('#mute').textContent = this.muted ? 'Unmute' : 'Mute';
    this.sendMedia();
  }

  toggleCamera() {
    this.cameraOff = !this.cameraOff;
    for (const t of this.local?.getVideoTracks() || []) t.enabled = !this.cameraOff;
    $('#camera').textContent = this.cameraOff ? 'Camera on' : 'Camera off';
    this.sendMedia();
  }

  /** Screen sharing replaces the camera in the same video sender (P2P or
   * SFU alike); the camera comes back when it ends. */
  async toggleScreen() {
    const camera = this.local?.getVideoTracks()[0];
    const senders = [this.p2p?.pc, this.pub].filter(Boolean).flatMap((pc) => pc.getSenders())
      .filter((s) => s.track?.kind === 'video');
    if (this.sharing) {
      this.sharing.stop();
      this.sharing = null;
      for (const s of senders) await s.replaceTrack(camera || null);
    } else {
      try {
        const screen = await navigator.mediaDevices.getDisplayMedia({ video: true });
        this.sharing = screen.getVideoTracks()[0];
        this.sharing.onended = () => { if (this.sharing) this.toggleScreen(); };
        for (const s of senders) await s.replaceTrack(this.sharing);
      } catch (e) { console.warn('screen', e); return; }
    }
    $('#screen').textContent = this.sharing ? 'Stop sharing' : 'Share screen';
    this.sendMedia();
  }

  sendMedia() {
    if (!this.call) return;
    this.app.request({
      type: 'call_media', call_id: this.call.id,
      audio: !this.muted, video: !!this.local?.getVideoTracks().length && !this.cameraOff, screen: !!this.sharing,
    }).catch(() => {});
  }

  /** Asks the SFU for a quality of one received slot. */
  async setQuality(mid, quality) {
    if (!this.call || this.topology !== 'sfu') return;
    this.quality.set(mid, quality);
    await this.app.request({ type: 'call_quality', call_id: this.call.id, mid, quality });
  }

  // ---- media and peer connections -------------------------------------

  async openMedia(media) {
    if (this.local) return;
    const c = capture();
    const video = media === 'video' ? { width: { ideal: c.width }, height: { ideal: c.height }, frameRate: { ideal: c.frameRate } } : false;
    try {
      this.local = await navigator.mediaDevices.getUserMedia({ audio: true, video });
    } catch (e) {
      console.warn('media', e);
      this.local = new MediaStream();
    }
  }

  stopMedia() {
    for (const t of this.local?.getTracks() || []) t.stop();
    this.local = null;
    if (this.sharing) { this.sharing.stop(); this.sharing = null; }
  }

  enter(call, servers) {
    this.call = call;
    this.iceServers = iceServers(servers);
    clearInterval(this.speakingTimer);
    this.speakingTimer = setInterval(() => this.watchPeerSpeaking().catch(() => {}), 500);
    $('#call').hidden = false;
    $('#call-title').textContent = `${call.media === 'video' ? 'Video' : 'Audio'} call`;
    $('#call-topology').textContent = 'waiting for others…';
    this.tile('local', this.app.userId, this.local, true);
    this.renderParameters();
    this.joining = null;
    const early = this.early;
    this.early = null;
    if (early && early.call_id === call.id) this.onTopology(early);
  }

  renderParameters() {
    $('#mute').textContent = this.muted ? 'Unmute' : 'Mute';
    $('#camera').textContent = this.cameraOff ? 'Camera on' : 'Camera off';
  }

  renderParticipants() {
    // Muted microphones and cameras are shown on the tiles.
    for (const [key, tile] of this.tiles) {
      const p = this.call.participants.find((x) => x.user_id === tile.dataset.user);
      if (!p) continue;
      const label = tile.querySelector('.label');
      const base = label.textContent.replace(/ · .*$/, '');
      const notes = [!p.audio && 'muted', !p.video && this.call.media === 'video' && 'camera off', p.screen && 'sharing screen'].filter(Boolean);
      label.textContent = notes.length ? `${base} · ${notes.join(', ')}` : base;
    }
    // Tiles of participants who left go away.
    const joined = new Set(this.call.participants.filter((p) => p.state === 'joined').map((p) => p.user_id));
    for (const [key, tile] of this.tiles) {
      if (key !== 'local' && tile.dataset.user && !joined.has(tile.dataset.user)) {
        if (key.startsWith('p2p:')) this.removeTile(key);
      }
    }
  }

  signal(signal) {
    this.app.request({ type: 'call_signal', call_id: this.call.id, to: this.p2p.peer, signal }).catch(() => {});
  }

  async startP2P(peer, offerer) {
    if (this.p2p && this.p2p.peer === peer) return;
    this.closeP2P();
    const pc = new RTCPeerConnection({ iceServers: this.iceServers });
    this.p2p = { pc, peer, pending: [] };
    for (const t of this.local?.getTracks() || []) pc.addTrack(t, this.local);
    pc.onicecandidate = (e) => { if (e.candidate) this.signal({ type: 'candidate', candidate: e.candidate.toJSON() }); };
    pc.ontrack = (e) => {
      if (e.track.kind !== 'video') {
        this.audioElement(`p2p:${peer}:audio`, e.streams[0] || new MediaStream([e.track]));
        return;
      }
      this.tile(`p2p:${peer}`, peer, e.streams[0] || new MediaStream([e.track]), false);
    };
    for (const ev of this.earlySignals.splice(0)) await this.onSignal(ev).catch((e) => console.warn('signal', e));
    if (offerer) {
      await pc.setLocalDescription(await pc.createOffer());
      this.signal({ type: 'offer', sdp: pc.localDescription.sdp });
    }
  }

  async startSfu() {
    if (this.pub) return;
    const pub = new RTCPeerConnection({ iceServers: this.iceServers });
    this.pub = pub;
    const audio = this.local?.getAudioTracks()[0];
    // A screen being shared is what the video sender carries.
    const video = this.sharing || this.local?.getVideoTracks()[0];
    if (audio) pub.addTransceiver(audio, { direction: 'sendonly', streams: [this.local] });
    if (video) {
      const settings = video.getSettings();
      const t = pub.addTransceiver(video, { direction: 'sendonly', streams: [this.local], sendEncodings: encodings(settings) });
      this.videoSender = t.sender;
      const params = t.sender.getParameters();
      params.degradationPreference = 'maintain-resolution';
      await t.sender.setParameters(params).catch(() => {});
    }
    await pub.setLocalDescription(await pub.createOffer());
    await gathered(pub);
    const answer = await this.app.request({ type: 'call_publish', call_id: this.call.id, sdp: pub.localDescription.sdp });
    await pub.setRemoteDescription({ type: 'answer', sdp: answer.sdp });

    const sub = new RTCPeerConnection({ iceServers: this.iceServers });
    this.sub = sub;
    this.subSlots = 0;
    sub.ontrack = (e) => {
      const mid = e.transceiver.mid;
      const stream = new MediaStream([e.track]);
      if (e.track.kind === 'video') {
        this.tile(`sfu:${mid}`, this.slots.get(mid), stream, false, mid);
        e.track.onunmute = () => this.sfuMediaArrived();
      } else {
        this.audioElement(`sfu:${mid}`, stream);
      }
    };
    sub.onconnectionstatechange = () => { if (sub.connectionState === 'connected') setTimeout(() => this.sfuMediaArrived(), 1500); };
    await this.ensureSlots(true);
  }

  /** Slots for everyone else joined (at least one); renegotiates the
   * subscribe session when more are needed. */
  async ensureSlots(first) {
    if (!this.sub || !this.call) return;
    const others = this.call.participants.filter((p) => p.state === 'joined' && p.user_id !== this.app.userId).length;
    const want = Math.max(1, others);
    if (!first && want <= this.subSlots) return;
    if (this.negotiating) { this.again = true; return; }
    this.negotiating = true;
    try {
      while (this.subSlots < want) {
        this.sub.addTransceiver('audio', { direction: 'recvonly' });
        this.sub.addTransceiver('video', { direction: 'recvonly' });
        this.subSlots += 1;
      }
      await this.sub.setLocalDescription(await this.sub.createOffer());
      await gathered(this.sub);
      const answer = await this.app.request({ type: 'call_subscribe', call_id: this.call.id, sdp: this.sub.localDescription.sdp });
      await this.sub.setRemoteDescription({ type: 'answer', sdp: answer.sdp });
    } finally {
      this.negotiating = false;
    }
    if (this.again) { this.again = false; await this.ensureSlots(); }
  }

  sfuMediaArrived() {
    if (this.p2p && this.topology === 'sfu') this.closeP2P();
  }

  closeP2P() {
    if (!this.p2p) return;
    this.p2p.pc.close();
    this.removeAudio('p2p:');
    for (const key of [...this.tiles.keys()]) if (key.startsWith('p2p:')) this.removeTile(key);
    this.p2p = null;
  }

  closeSfu() {
    for (const pc of [this.pub, this.sub]) if (pc) pc.close();
    this.pub = null;
    this.sub = null;
    this.videoSender = null;
    this.slots.clear();
    for (const key of [...this.tiles.keys()]) if (key.startsWith('sfu:')) this.removeTile(key);
    this.removeAudio('sfu:');
  }

  removeAudio(prefix) {
    for (const audio of document.querySelectorAll(`audio[id^="audio-${prefix}"]`)) {
      audio.srcObject = null;
      audio.remove();
    }
  }

  teardown() {
    clearInterval(this.speakingTimer);
    this.earlySignals = [];
    this.early = null;
    this.joining = null;
    this.resuming = null;
    this.closeP2P();
    this.closeSfu();
    this.stopMedia();
    for (const key of [...this.tiles.keys()]) this.removeTile(key);
    this.call = null;
    this.topology = null;
    this.muted = false;
    this.cameraOff = false;
    $('#call').hidden = true;
  }

  // ---- the grid ---------------------------------------------------------

  tile(key, userId, stream, local, mid) {
    let tile = this.tiles.get(key);
    if (!tile) {
      tile = document.createElement('div');
      tile.className = 'tile';
      const video = document.createElement('video');
      video.autoplay = true;
      video.playsInline = true;
      video.muted = true;
      const label = document.createElement('span');
      label.className = 'label';
      tile.append(video, label);
      if (mid != null) {
        const spot = document.createElement('button');
        spot.className = 'spot';
        spot.type = 'button';
        spot.textContent = 'spotlight';
        spot.onclick = () => {
          const on = !tile.classList.contains('spotlight');
          for (const t of this.tiles.values()) t.classList.remove('spotlight');
          tile.classList.toggle('spotlight', on);
          spot.textContent = on ? 'thumbnail' : 'spotlight';
          this.setQuality(mid, on ? 'spotlight' : 'thumbnail').catch(() => {});
        };
        tile.append(spot);
        tile.dataset.mid = mid;
      }
      $('#call-grid').append(tile);
      this.tiles.set(key, tile);
    }
    const video = tile.querySelector('video');
    if (stream && video.srcObject !== stream) video.srcObject = stream;
    this.label(key, userId, false, local);
    return tile;
  }

  label(key, userId, screen, local) {
    const tile = this.tiles.get(key);
    if (!tile || !userId) return;
    tile.dataset.user = userId;
    tile.querySelector('.label').textContent = `${local ? 'You' : this.app.nameOf(userId)}${screen ? ' (screen)' : ''}`;
  }

  removeTile(key) {
    const tile = this.tiles.get(key);
    if (tile) tile.remove();
    this.tiles.delete(key);
  }

  audioElement(key, stream) {
    let audio = document.getElementById(`audio-${key}`);
    if (!audio) {
      audio = document.createElement('audio');
      audio.id = `audio-${key}`;
      audio.autoplay = true;
      document.body.append(audio);
    }
    audio.srcObject = stream;
  }

  /** Peer-to-peer calls have no SFU to name the speaker: the peer's tile
   * is highlighted while its audio level is up. */
  async watchPeerSpeaking() {
    if (this.topology !== 'p2p' || !this.p2p) return;
    let level = 0;
    (await this.p2p.pc.getStats()).forEach((r) => {
      if (r.type === 'inbound-rtp' && r.kind === 'audio') level = r.audioLevel || 0;
    });
    const tile = this.tiles.get(`p2p:${this.p2p.peer}`);
    if (tile) tile.classList.toggle('speaker', level > 0.05);
  }

  // ---- for tests and diagnostics -------------------------------------

  /** Every received video stream: which connection, slot, decoded frames
   * and frame width (from getStats). */
  async videoStats() {
    const out = [];
    for (const [name, pc] of [['p2p', this.p2p?.pc], ['sfu', this.sub]]) {
      if (!pc) continue;
      const stats = await pc.getStats();
      stats.forEach((r) => {
        if (r.type === 'inbound-rtp' && r.kind === 'video') {
          out.push({ via: name, mid: r.mid, framesDecoded: r.framesDecoded || 0, frameWidth: r.frameWidth || 0, frameHeight: r.frameHeight || 0 });
        }
      });
    }
    return out;
  }
}
