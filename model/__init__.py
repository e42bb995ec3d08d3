"""The TensorFlow ranking model: small serializable Keras layers (`layers`) and the
recall-and-rank ranker assembled from them (`ranker`)."""
