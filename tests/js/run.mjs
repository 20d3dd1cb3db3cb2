// transformers.js on a folder hatch-onnx wrote, as a user runs it: local files only.
// Reads one JSON request on stdin, prints one JSON answer on stdout:
//   {"root": DIR, "model": "name/feature", "kind": "masked-lm" | "image-classification" | "causal-lm" | "causal-lm-logits" | "seq2seq-lm",
//    "texts": [...], "pixel_values": {dims, data}, "max_new_tokens": N, "dtype": "fp32" | "q8" | "fp16" | "q4" ...}
import { env, AutoTokenizer, AutoModelForMaskedLM, AutoModelForImageClassification, AutoModelForCausalLM, AutoModelForSeq2SeqLM, Tensor } from "@huggingface/transformers";

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
if (request.kind === "image-classification") {
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
