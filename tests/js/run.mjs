// transformers.js on a folder hatch-onnx wrote, as a user runs it: local files only.
// Reads one JSON request on stdin, prints one JSON answer on stdout:
//   {"root": DIR, "model": "name/feature", "kind": "masked-lm" | "image-classification" | "causal-lm" | "causal-lm-logits"
//    | "seq2seq-lm" | "speech2seq-lm" | "vision2seq-lm", "texts": [...], "pixel_values" | "input_features": {dims, data},
//    "max_new_tokens": N, "dtype": "fp32" | "q8" | "fp16" | "q4" ...}
import { env, AutoTokenizer, AutoModelForMaskedLM, AutoModelForImageClassification, AutoModelForCausalLM, AutoModelForSeq2SeqLM,
  AutoModelForSpeechSeq2Seq, AutoModelForVision2Seq, Tensor } from "@huggingface/transformers";

const request = JSON.parse(await new Promise((resolve) => {
  let text = "";
  process.stdin.on("data", (chunk) => (text += chunk));
  process.stdin.on("end", () => resolve(text));
}));
env.allowRemoteModels = false;
env.localModelPath = request.root;
const options = { dtype: request.dtype ?? "fp32", device: "cpu" };

function plain(tensor) {
  return { dims: tensor.dims, data: Array.from(tensor.data, Number) };
}

let answer;
if (request.kind === "speech2seq-lm" || request.kind === "vision2seq-lm") {
  // automatic-speech-recognition / image-to-text's models: onnx/encoder_model.onnx + onnx/decoder_model_merged.onnx,
  // generating from the features or pixels given (no preprocessing in the comparison)
  const speech = request.kind === "speech2seq-lm";
  const cls = speech ? AutoModelForSpeechSeq2Seq : AutoModelForVision2Seq;
  const model = await cls.from_pretrained(request.model, options);
  const given = speech ? request.input_features : request.pixel_values;
  const inputs = new Tensor("float32", Float32Array.from(given.data), given.dims);
  const settings = { inputs, max_new_tokens: request.max_new_tokens, min_new_tokens: request.max_new_tokens, do_sample: false };
  if (speech) {  // Whisper's prompt tokens are one list for the whole batch: give each row its start token
    const batch = given.dims[0];
    const start = Number(model.generation_config?.decoder_start_token_id ?? model.config.decoder_start_token_id);
    settings.decoder_input_ids = Array.from({ length: batch }, () => [start]);
  }
  const output = await model.generate(settings);
  answer = { sequences: output.tolist().map((row) => row.map(Number)), sessions: Object.keys(model.sessions) };
} else if (request.kind === "image-classification") {
  const model = await AutoModelForImageClassification.from_pretrained(request.model, options);
  const pixels = new Tensor("float32", Float32Array.from(request.pixel_values.data), request.pixel_values.dims);
  answer = { logits: plain((await model({ pixel_values: pixels })).logits) };
} else {
  const tokenizer = await AutoTokenizer.from_pretrained(request.model);
  if (request.kind === "masked-lm") {
    const model = await AutoModelForMaskedLM.from_pretrained(request.model, options);
    const inputs = tokenizer(request.texts, { padding: true });
    answer = { logits: plain((await model(inputs)).logits), input_ids: plain(inputs.input_ids) };
  } else if (request.kind === "causal-lm-logits") {
    // one forward pass of a decoder with its cache (empty), unpadded: the logits
    const model = await AutoModelForCausalLM.from_pretrained(request.model, options);
    const inputs = tokenizer(request.texts, { padding: true });
    answer = { logits: plain((await model(inputs)).logits), input_ids: plain(inputs.input_ids) };
  } else if (request.kind === "seq2seq-lm") {
    // text2text-generation: encoder_model.onnx + decoder_model_merged.onnx; the encoder input left-padded
    tokenizer.padding_side = "left";
    const model = await AutoModelForSeq2SeqLM.from_pretrained(request.model, options);
    const inputs = tokenizer(request.texts, { padding: true });
    const output = await model.generate({ ...inputs, max_new_tokens: request.max_new_tokens, do_sample: false, min_new_tokens: request.max_new_tokens });
    answer = { sequences: output.tolist().map((row) => row.map(Number)), input_ids: plain(inputs.input_ids) };
  } else {
    tokenizer.padding_side = "left";
    const model = await AutoModelForCausalLM.from_pretrained(request.model, options);
    const inputs = tokenizer(request.texts, { padding: true });
    const output = await model.generate({ ...inputs, max_new_tokens: request.max_new_tokens, do_sample: false, min_new_tokens: request.max_new_tokens });
    answer = { sequences: output.tolist().map((row) => row.map(Number)), input_ids: plain(inputs.input_ids) };
  }
}
process.stdout.write(JSON.stringify(answer));
