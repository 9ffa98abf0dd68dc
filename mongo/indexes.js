// The work-queue and monitoring indexes of embedder, for mongosh.
//
//   mongosh "mongodb://localhost:27017/twitter_data" \
//     --eval 'var collection = "tweets"' mongo/indexes.js
//
// Optional variables (set them with --eval before the file):
//   target   the target field           (default "gemma_embedded_768")
//   filter   the queue filter's fields  (default {lang: 1, classified: 1})
//   exclude  extra partial predicates   (default {retweeted: null})
// `embedder indexes` creates the same two indexes from Python. Both are idempotent.

if (typeof collection === "undefined") {
  throw new Error('set the collection first: --eval \'var collection = "tweets"\'');
}
const targetField = typeof target === "undefined" ? "gemma_embedded_768" : target;
const filterKeys = typeof filter === "undefined" ? { lang: 1, classified: 1 } : filter;
const excluded = typeof exclude === "undefined" ? { retweeted: null } : exclude;
const suffix = targetField === "gemma_embedded_768" ? "" : "__" + targetField;

// Pending docs only: MongoDB keeps a doc in this index while its target field is empty, so
// "the next N pending docs after _id X" is a short range scan however many are done.
const queueKeys = Object.assign({}, filterKeys, { _id: 1 });
// Another target's queue ends with its own field (null in every entry, so the order stays
// _id's): MongoDB refuses two indexes on one key pattern that differ only in their filter.
// So does an empty filter's, whose keys would otherwise be the _id index's.
if (suffix || Object.keys(filterKeys).length === 0) queueKeys[targetField] = 1;
const partial = Object.assign({}, excluded);
partial[targetField] = null;
db.getCollection(collection).createIndex(queueKeys, {
  name: "embedding_work_queue" + suffix,
  partialFilterExpression: partial,
});

// Finished docs (done or failed) by status: cheap progress counts and failure listings.
const statusKey = {};
statusKey[targetField + ".status"] = 1;
db.getCollection(collection).createIndex(statusKey, {
  name: "embedding_done" + suffix,
  sparse: true,
});

printjson(db.getCollection(collection).getIndexes());
