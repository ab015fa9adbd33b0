"""Clip -> frames and 16 kHz mono audio: the one module that knows containers and codecs.

Everything goes through PyAV (FFmpeg inside the wheel), for audio and for frames:

* :func:`probe` reads stream metadata (durations, rates, channel layout) without decoding;
* :func:`decode_audio` decodes only the needed window (seeks to it), converts each frame to planar
  float with FFmpeg's own converter, downmixes by the channel *names* of the layout (centre channel of
  5.1, mean of stereo; :func:`pipeline.utterance.audio.downmix`), trims the AAC end padding to the
  stream's duration, cuts spans longer than ``max_seconds`` to their centre and resamples to 16 kHz.
  A stream that states no duration (Matroska/WebM, live recordings) gets its end from its packets
  (demuxed near the end, not decoded), so a long file is never decoded in full to be cut. A window
  holding a NaN, infinite or absurd (beyond :data:`MAX_AUDIO_PEAK`) sample is refused
  (:class:`MediaError`), never passed on;
* :func:`decode_frames` picks ``n`` frames spread uniformly over a span (centres of ``n`` equal bins),
  decoding forward and **seeking** whenever the next target lies more than ``seek_gap`` seconds
  ahead. Decoding forward, the frame nearest each bin centre is taken. After a seek (long spans only)
  the first frame within ``seek_tolerance`` of a bin width from the centre is taken, so a seek costs
  at most the part of one keyframe interval outside that window: the cost depends on the number of
  frames wanted and the keyframe interval, not on the clip's length. Only the chosen frames are
  converted to RGB and kept (memory is flat in the clip's length). With ``skip_nonref`` (the media stage's
  default, ``MediaConfig.decode_skip_nonref``) the decoder skips the frames no other frame refers to
  (most B-frames) and the nearest decoded frame is taken, within one frame time of each target; where
  that fails, the span is decoded again in full.

Time: the span ``[start, end]`` is in the file's own time, counted from its first timestamp (what
a player shows as 0:00), not in raw timestamps: an MKV cut from a recording whose timestamps start
at 10 s, or an MPEG-TS (which starts at 1.4 s), is read from its start. A seek that lands after its
target (MPEG-TS with sparse keyframes) is retried further back.

Frames (bounded memory): each chosen frame is turned upright by the display rotation the container
or the codec stores (phones record portrait video sideways with a -90 degree display matrix) and
scaled down, aspect kept, to at most ``max_pixels`` (default :data:`MAX_FRAME_PIXELS`, 1280x720)
pixels; every frame of a call gets the size of the first one, a frame of another shape (a stream
whose resolution changes mid-way) is scaled to fit inside it and centred on black. So ``n`` frames
take at most ``n * 3 * max_pixels`` bytes whatever the input, and a stream whose frames exceed
``max_source_pixels`` (default :data:`MAX_SOURCE_PIXELS`, beyond 8K) is refused before decoding,
since the decoder itself would hold several frames of that size.

Frames: PyAV was chosen over OpenCV because it gives exact timestamps, stream metadata and the
audio from the same container.

Errors: every failure caused by the file (missing, empty, unreadable, no such stream, span outside
the media, non-finite samples, oversized frames) raises :class:`MediaError` whose message names the
file and says what is wrong; :class:`TruncatedMedia` (a :class:`MediaError`) carries what was
decoded before the data broke off.

Modules: :mod:`pipeline.decode.container` (opening, probing, stream times and spans, the errors;
:func:`~pipeline.decode.container.open_span` is the opening sequence both decoders share),
:mod:`pipeline.decode.waveform` (:func:`decode_audio`), :mod:`pipeline.decode.frames` (:func:`decode_frames`).
"""
