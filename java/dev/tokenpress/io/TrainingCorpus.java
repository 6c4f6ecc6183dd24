package dev.tokenpress.io;

/** A few kilobytes of English prose, code and some accented text for training the generated models' BPE merges. */
final class TrainingCorpus {
    private TrainingCorpus() {}

    static final String TEXT = """
            The quick brown fox jumps over the lazy dog. The dog does not seem to mind, and the fox keeps running
            until it reaches the edge of the forest. There it stops, looks back at the farm, and waits for the night.
            When the sun goes down, the animals of the farm gather in the barn to talk about the day. The old horse
            says that the weather will change tomorrow. The hens are worried about the fox; the cat is not.

            A language model reads a sequence of tokens and predicts the next one. Each token is a small piece of
            text: a word, a part of a word, a number, a space or a punctuation mark. The model turns every token into
            a vector, mixes the vectors with attention, and produces a probability for every token in the vocabulary.
            During generation the most likely token, or a sampled one, is appended to the sequence and the process
            repeats. The keys and values computed for earlier tokens are stored in a cache so that they do not have
            to be computed again. This cache grows with the length of the context, and for long contexts it can use
            more memory than the weights of the model themselves.

            Compression of the cache is therefore an active area of research. Some methods keep only the most
            important tokens, chosen by the attention they received; others quantize the keys and values to fewer
            bits; others merge similar tokens together. Every method trades memory for accuracy, and the best choice
            depends on the task, the model, and the hardware it runs on.

            In the morning the farmer walked to the market with a basket of apples, pears and plums. He sold most of
            them before noon and bought bread, cheese, milk, and a new pair of boots. On the way home he met his
            neighbour, who was building a fence around her garden. They talked about the rain, the price of grain,
            the school in the village, and the new road that the town wants to build next year.

            Numbers appear everywhere: 1, 2, 3, 10, 42, 100, 256, 1024, 2048, 4096, 65536, 3.14159, 2.71828, 0.5,
            1e-5, 500000, 2024-01-15, 12:30, $19.99, 75%, #1, version 1.2.3.

            public final class Matrix {
                private final float[] data;
                private final int rows, cols;

                public Matrix(int rows, int cols) {
                    this.rows = rows;
                    this.cols = cols;
                    this.data = new float[rows * cols];
                }

                public float get(int i, int j) {
                    return data[i * cols + j];
                }

                public void set(int i, int j, float value) {
                    data[i * cols + j] = value;
                }

                public Matrix multiply(Matrix other) {
                    if (cols != other.rows) throw new IllegalArgumentException("shape mismatch");
                    Matrix out = new Matrix(rows, other.cols);
                    for (int i = 0; i < rows; i++) {
                        for (int k = 0; k < cols; k++) {
                            float a = get(i, k);
                            for (int j = 0; j < other.cols; j++) {
                                out.data[i * other.cols + j] += a * other.get(k, j);
                            }
                        }
                    }
                    return out;
                }
            }

            def softmax(values):
                m = max(values)
                exps = [math.exp(v - m) for v in values]
                total = sum(exps)
                return [e / total for e in exps]

            def rms_norm(x, weight, eps=1e-5):
                mean_square = sum(v * v for v in x) / len(x)
                scale = 1.0 / math.sqrt(mean_square + eps)
                return [v * scale * w for v, w in zip(x, weight)]

            for (int layer = 0; layer < numLayers; layer++) {
                x = attention(x, layer);
                x = mlp(x, layer);
            }
            return logits;

            import numpy as np
            import torch
            from transformers import AutoModelForCausalLM, AutoTokenizer

            model = AutoModelForCausalLM.from_pretrained("model", torch_dtype=torch.bfloat16)
            inputs = tokenizer("Hello, world!", return_tensors="pt")
            outputs = model.generate(**inputs, max_new_tokens=32)
            print(tokenizer.decode(outputs[0], skip_special_tokens=True))

            {"name": "tokenpress", "version": "0.1.0", "layers": 16, "heads": 32, "enabled": true, "scale": null}

            <html><head><title>Hello</title></head><body><p>Hello, world!</p></body></html>

            SELECT name, count(*) AS total FROM users WHERE age > 18 GROUP BY name ORDER BY total DESC LIMIT 10;

            Le café est très bon ce matin. Nous avons mangé des crêpes et bu du thé à la fenêtre, en regardant la
            pluie tomber sur les toits de la ville. Où est la gare ? Elle est à côté de l'église, près du marché.
            Die Straße ist nass, und die Kinder spielen trotzdem draußen. Schöne Grüße aus München!
            El niño comió una manzana en el jardín. ¿Dónde está la biblioteca? Está cerca de la estación.
            São Paulo, Zürich, Kraków, Reykjavík, Ålesund, Malmö, Dvořák, naïve, façade, jalapeño, déjà vu.

            Why do we write tests? Because code that is not tested is code that does not work yet. A good test is
            small, fast, and tells you exactly what went wrong when it fails. A good error message names the file,
            the line, and what the user should do next. It's easy to forget, but we'll thank ourselves later: they're
            the first thing we read when something breaks, and you've probably seen ones that didn't help at all.

            She said that the results were better than expected, although the model was smaller than the one they
            had used before. They would need more data, more time and more patience, but the first experiments were
            promising. The team decided to continue the work over the summer and to publish a report in the autumn.
            """;
}
