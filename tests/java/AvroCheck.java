// An independent reader for Sluice's Avro contracts, built on the Java Avro library.
//
//   java -cp 'JARS/*' AvroCheck.java fingerprints SCHEMA_DIR
//       prints "<full name> <CRC-64-AVRO as 16 hex digits>" for every named schema of the
//       folder, parsed together with one Schema.Parser (so cross-file names resolve) and
//       fingerprinted with SchemaNormalization.parsingFingerprint64.
//   java -cp 'JARS/*' AvroCheck.java decode SCHEMA_DIR FULL_NAME HEX_MESSAGE...
//       decodes each single-object message with BinaryMessageDecoder and prints it as JSON.
import java.io.File;
import java.nio.file.Files;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.HexFormat;
import java.util.List;
import org.apache.avro.Schema;
import org.apache.avro.SchemaNormalization;
import org.apache.avro.generic.GenericData;
import org.apache.avro.generic.GenericRecord;
import org.apache.avro.message.BinaryMessageDecoder;

public class AvroCheck {
  static List<Schema> parseAll(File dir) throws Exception {
    File[] files = dir.listFiles((d, n) -> n.endsWith(".avsc"));
    Arrays.sort(files);
    // Parse repeatedly until every file resolves: a file may name types of files not yet parsed.
    List<File> pending = new ArrayList<>(Arrays.asList(files));
    Schema.Parser parser = new Schema.Parser();
    List<Schema> out = new ArrayList<>();
    while (!pending.isEmpty()) {
      int before = pending.size();
      for (File f : new ArrayList<>(pending)) {
        try {
          Schema.Parser attempt = new Schema.Parser();
          attempt.addTypes(parser.getTypes().values());
          Schema s = attempt.parse(Files.readString(f.toPath()));
          parser.addTypes(attempt.getTypes().values());
          out.add(s);
          pending.remove(f);
        } catch (org.apache.avro.SchemaParseException | org.apache.avro.AvroTypeException e) {
          // an undefined name: try again after the others
        }
      }
      if (pending.size() == before) throw new IllegalStateException("unresolvable: " + pending);
    }
    return out;
  }

  public static void main(String[] args) throws Exception {
    File dir = new File(args[1]);
    List<Schema> schemas = parseAll(dir);
    if (args[0].equals("fingerprints")) {
      for (Schema s : schemas) {
        long fp = SchemaNormalization.parsingFingerprint64(s);
        System.out.println(s.getFullName() + " " + String.format("%016x", fp));
      }
    } else if (args[0].equals("decode")) {
      Schema target = schemas.stream().filter(s -> s.getFullName().equals(args[2])).findFirst().orElseThrow();
      BinaryMessageDecoder<GenericRecord> decoder = new BinaryMessageDecoder<>(GenericData.get(), target);
      for (int i = 3; i < args.length; i++) {
        GenericRecord r = decoder.decode(HexFormat.of().parseHex(args[i]));
        System.out.println(GenericData.get().toString(r));
      }
    } else {
      throw new IllegalArgumentException("unknown command " + args[0]);
    }
  }
}
