"""aiortc as an independent peer: one aiortc publishes VP8 + Opus over WHIP,
another subscribes over WHEP and decodes what arrives.

usage: whip_whep.py BASE_URL TOKEN SECONDS [VIDEO_MIME]
VIDEO_MIME is video/VP8 (default) or video/H264 (passed through unchanged).
Prints one JSON line with the counts; exits 1 if too little was decoded.
"""

import asyncio
import json
import sys
import urllib.request

import aioice.ice
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import AudioStreamTrack, VideoStreamTrack
from aiortc.rtcrtpsender import RTCRtpSender

# Loopback only: aioice drops 127.0.0.1 from its host candidates otherwise.
aioice.ice.get_host_addresses = lambda use_ipv4=True, use_ipv6=True: ["127.0.0.1"]


def post(url, token, sdp):
    req = urllib.request.Request(
        url,
        data=sdp.encode(),
        method="POST",
        headers={"Content-Type": "application/sdp", "Authorization": f"Bearer {token}"},
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.status == 201, resp.status
        return resp.read().decode(), resp.headers["Location"]


def delete(url, token):
    req = urllib.request.Request(url, method="DELETE", headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return resp.status


def prefer(transceiver, kind, mime):
    codecs = [c for c in RTCRtpSender.getCapabilities(kind).codecs if c.mimeType == mime]
    transceiver.setCodecPreferences(codecs)


async def negotiate(pc, url, token):
    await pc.setLocalDescription(await pc.createOffer())
    answer, location = await asyncio.get_running_loop().run_in_executor(
        None, post, url, token, pc.localDescription.sdp
    )
    await pc.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
    return location


def enough(counts):
    return counts["video_frames"] >= 10 and counts["audio_frames"] >= 50


async def main(base, token, seconds, video_mime):
    config = RTCConfiguration(iceServers=[])
    publisher = RTCPeerConnection(config)
    prefer(publisher.addTransceiver(AudioStreamTrack(), direction="sendonly"), "audio", "audio/opus")
    prefer(publisher.addTransceiver(VideoStreamTrack(), direction="sendonly"), "video", video_mime)
    pub_location = await negotiate(publisher, f"{base}/whip/aiortc", token)

    subscriber = RTCPeerConnection(config)
    prefer(subscriber.addTransceiver("audio", direction="recvonly"), "audio", "audio/opus")
    prefer(subscriber.addTransceiver("video", direction="recvonly"), "video", video_mime)
    counts = {"video_frames": 0, "audio_frames": 0, "width": 0}

    async def consume(track):
        while True:
            try:
                frame = await track.recv()
            except Exception:
                return
            if track.kind == "video":
                counts["video_frames"] += 1
                counts["width"] = frame.width
            else:
                counts["audio_frames"] += 1

    tasks = []
    subscriber.on("track", lambda track: tasks.append(asyncio.ensure_future(consume(track))))
    sub_location = await negotiate(subscriber, f"{base}/whep/aiortc", token)

    # Wait until enough arrived, at most `seconds`: a busy machine may take
    # a while to connect, and a fast one need not wait the whole time.
    deadline = asyncio.get_running_loop().time() + seconds
    while not enough(counts) and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.1)
    for location in (sub_location, pub_location):
        await asyncio.get_running_loop().run_in_executor(None, delete, f"{base}{location}", token)
    await subscriber.close()
    await publisher.close()
    for t in tasks:
        t.cancel()
    print(json.dumps(counts), flush=True)
    sys.exit(0 if enough(counts) else 1)


if __name__ == "__main__":
    mime = sys.argv[4] if len(sys.argv) > 4 else "video/VP8"
    asyncio.run(main(sys.argv[1], sys.argv[2], float(sys.argv[3]), mime))
